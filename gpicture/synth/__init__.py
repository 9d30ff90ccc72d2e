"""The procedural LiDAR world: driving scenes, ray-cast sensors, exact labels, and
writers of the real nuScenes and Waymo formats (``gpicture synth``)."""
