"""A runnable ML segmentation service that honours oilspill's ML contract, without a model."""
