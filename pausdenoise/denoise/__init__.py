"""Tiled Noise2Void inference of whole CCD frames (the denoise stage).

A frame (a lazy dask array in ADU) is normalised with whole-frame statistics, run through
the U-Net chunk by chunk with ``dask.array.map_overlap`` and a halo derived from the model,
and denormalised back to ADU. Chunk origins on the network's pooling grid, halos of the
receptive-field radius and no dask boundary padding make the result *exactly* whole-image
inference (seam-free, image edges included); masked and non-finite pixels enter the network
as the sky. The model travels through the graph once, as a small reference; each process
loads it once. Writing into the store is resumable chunk by chunk.

Sub-modules
-----------
- :mod:`~pausdenoise.denoise.config`: :class:`DenoiseConfig` (torch-free).
- :mod:`~pausdenoise.denoise.model`: :class:`ModelRef`, the per-process model cache,
  devices and torch threads.
- :mod:`~pausdenoise.denoise.precision`: autocast dtype policy and TF32.
- :mod:`~pausdenoise.denoise.tiling`: halo and chunk rules, block inference,
  :func:`denoise_frame` (why tiling is exact, masked pixels).
- :mod:`~pausdenoise.denoise.restore`: the catalogue restoration (``restore_catalogue``):
  catalogue sources given back, inside their apertures, what the network smoothed away.
- :mod:`~pausdenoise.denoise.writer`: resumable :func:`denoise_to_store`.
- :mod:`~pausdenoise.denoise.precision_check`: :func:`measure_precision_error` of reduced
  precision against float32.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(__name__, {
    "CPU_BATCH_PIXELS": "tiling",
    "ChunkingError": "tiling",
    "DENOISED": "writer",
    "DONE": "writer",
    "DenoiseConfig": "config",
    "ModelRef": "model",
    "as_model_ref": "model",
    "check_chunks": "tiling",
    "merge_short_edges": "tiling",
    "clear_model_cache": "model",
    "cpu_optimise_default": "model",
    "default_torch_threads": "model",
    "denoise_frame": "tiling",
    "denoise_key": "writer",
    "denoise_to_store": "writer",
    "frame_stats_from_dask": "tiling",
    "get_model": "model",
    "measure_precision_error": "precision_check",
    "model_cache_info": "model",
    "predict_block": "tiling",
    "resolve_halo": "tiling",
    "suggest_chunks": "tiling",
    "tf32_mode": "precision",
})
