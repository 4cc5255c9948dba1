"""ControlNet preprocessors by the names of WebUI's ControlNet extension (its ``module``), and their parameters.

A request names one per unit; the worker turns the unit's image into the map its ControlNet was trained on
(``pipelines.preprocess``). The weight-free ones run anywhere (OpenCV, Pillow, numpy); the others need a
detector's weights, which a request may use only where the catalog holds them (the worker says so, naming the
unit's field).
"""

from __future__ import annotations

#: Preprocessors that need no weights: each runs on any worker.
WEIGHT_FREE: tuple[str, ...] = (
    "none", "canny", "invert", "threshold", "binary", "tile_resample", "tile_colorfix", "tile_colorfix+sharp",
    "shuffle", "lineart_standard", "blur_gaussian", "scribble_xdog", "t2ia_color_grid", "recolor_luminance",
    "recolor_intensity",
)
#: Preprocessors WebUI's extension runs with a detector's weights (depth, pose, edges ...): refused unless the
#: catalog holds the detector.
NEEDS_WEIGHTS: tuple[str, ...] = (
    "depth_midas", "depth_zoe", "depth_leres", "depth_leres++", "depth_anything", "openpose", "openpose_face",
    "openpose_faceonly", "openpose_full", "openpose_hand", "dw_openpose_full", "mlsd", "normal_bae",
    "normal_midas", "lineart_realistic", "lineart_coarse", "lineart_anime", "lineart_anime_denoise", "softedge_hed",
    "softedge_hedsafe", "softedge_pidinet", "softedge_pidisafe", "scribble_hed", "scribble_pidinet",
    "seg_ofade20k", "seg_ofcoco", "seg_ufade20k", "mediapipe_face",
)
PREPROCESSORS: tuple[str, ...] = WEIGHT_FREE + NEEDS_WEIGHTS
