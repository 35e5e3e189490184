"""Pipelines: one config from videos to an evaluation report, as cached, resumable stages.

    captioner pipeline run configs/pipeline_smoke.yaml [--set key=value ...] [--until STAGE]
                                                       [--force STAGE] [--dry-run]

`graph` is the stage engine (keys, plan, markers); `stages` builds the captioning stages
from the `captioner` library's API.
"""

from .graph import Stage, StageFailed, execute, plan
from .stages import PipelineConfig, build_stages, join_training, load_pipeline, run_pipeline

__all__ = ["PipelineConfig", "Stage", "StageFailed", "build_stages", "execute", "join_training", "load_pipeline",
           "plan", "run_pipeline"]
