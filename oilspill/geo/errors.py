"""What can be wrong with a scene or a mask, importable without loading GDAL: the web layer
maps these to answers before any raster library is needed."""


class SceneError(Exception):
    """A scene cannot be used; the message is safe to show to the uploader."""


class UnreadableScene(SceneError):
    """Not a raster GDAL can read, truncated or corrupt, or of an unsupported data type."""


class SceneTooLarge(SceneError):
    """More pixels than OILSPILL_MAX_SCENE_PIXELS allows."""


class NoSuchBand(SceneError):
    """The band OILSPILL_SCENE_BAND names is not in the file."""


class EmptyScene(SceneError):
    """Not one valid pixel: all border, nodata or NaN."""


class BadMask(Exception):
    """A tile's or the overview's mask is unreadable, or not one 8-bit band of the right size."""
