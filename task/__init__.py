"""What client and server share: models and data sets."""
