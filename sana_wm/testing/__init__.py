"""Test fixtures: files and processes that tests and benchmarks build. Production code never imports this package.

Modules:
    data        raw video samples and shards written in the shard format (`write_raw_shard`, `tiny_video_clip`)
    training    tiny latent shards, composed train configs, process-group launcher, a tiny reference step
    model_root  a complete release layout with tiny random components (`write_random_model_root`)
    refiner     a tiny random LTX-2 refiner in the release layout (`tiny_refiner_components`, `save_tiny_refiner`)

The encoders' tiny presets (used by `encoders.kind=tiny_random` and the demo) are production code and live in
`sana_wm.encoders.tiny`.
"""
