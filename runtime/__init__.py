"""Early-exit runtime: loads an exported artifact and chains its per-layer graphs.

Depends on numpy, onnxruntime and tokenizers only; importing it never imports torch.
"""
from .backends import BACKENDS, BackendError
from .manifest import ArtifactError, Manifest, load_manifest
from .policies import POLICIES, ExitPolicy, LayerOutputs, PolicyError, make_policy, simulate
from .session import EarlyExitModel, Prediction
from .tokenize import InputError

__all__ = ["BACKENDS", "BackendError", "ArtifactError", "Manifest", "load_manifest", "POLICIES", "ExitPolicy", "LayerOutputs",
           "PolicyError", "make_policy", "simulate", "EarlyExitModel", "Prediction", "InputError"]
