"""Large scenes: tiling for the ML service, the stitched mask as a COG, its statistics."""
