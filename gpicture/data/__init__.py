"""Dataset formats: readers and writers of the on-disk layouts GPICTURE consumes."""
