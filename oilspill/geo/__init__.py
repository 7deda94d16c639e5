"""Rasters and geometry: scenes read by windows, tiles, the stitched mask, its slicks as places.

GDAL_OPTIONS go around every raster read and write here: GDAL's block cache (5% of RAM by
default) is capped so memory stays bounded whatever the scene, and an uploaded sidecar file
(.aux.xml, .ovr) is never read nor one written.
"""

GDAL_CACHE_MIB = 64
GDAL_OPTIONS = {"GDAL_CACHEMAX": GDAL_CACHE_MIB, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                "GDAL_PAM_ENABLED": "NO"}
