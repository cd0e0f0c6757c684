"""Readers and writers of the on-disk formats posevla consumes, each conforming to the format's own tools.

* :mod:`.omni3d` -- Omni3D / cubercnn json (and the generated tabletop scenes, written in that format);
* :mod:`.bop` -- BOP datasets (scene_gt / scene_camera / models_info);
* :mod:`.lerobot` -- LeRobot v3 robot episodes.

Formats read and write files; nothing here simulates.
"""
