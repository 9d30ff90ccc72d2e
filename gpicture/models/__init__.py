"""Models: the VFE + DSVT student, GPICTURE's pre-training objectives, task heads."""
