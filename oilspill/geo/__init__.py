"""Rasters and geometry: scenes read by windows, tiles, the stitched mask, its slicks as places.

GDAL_OPTIONS go around every raster read and write here: GDAL's block cache (5% of RAM by
default) is capped so memory stays bounded whatever the scene, an uploaded sidecar file
(.aux.xml, .ovr) is never read nor one written, and a PNG is decoded by libpng row by row:
GDAL's whole-image shortcut (GDAL 3.10) gives a PNG cut short as if it were whole, with
garbage for its missing rows, where libpng says it is truncated.
"""

GDAL_CACHE_MIB = 64
GDAL_OPTIONS = {"GDAL_CACHEMAX": GDAL_CACHE_MIB, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                "GDAL_PAM_ENABLED": "NO", "GDAL_PNG_WHOLE_IMAGE_OPTIM": "NO"}
