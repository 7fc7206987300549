"""Data: safe image loading, folder layouts and splits, transforms, the dataset doctor, downloads."""
