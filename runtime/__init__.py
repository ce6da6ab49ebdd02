"""Early-exit runtime: loads an exported artifact and chains its per-layer graphs.

Depends on numpy, onnxruntime and tokenizers only; importing it never imports torch.

    from runtime import EarlyExitModel
    with EarlyExitModel("artifacts/sst2") as m:
        print(m.predict(["a gorgeous, witty, seductive movie."])[0].label)
"""
from .backends import BACKENDS, BackendError
from .chain import Chain, ChainResult
from .fsutil import ArtifactError
from .manifest import Manifest, load_manifest
from .model import EarlyExitModel, Prediction
from .policies import POLICIES, ExitPolicy, LayerOutputs, PolicyError, make_policy, simulate
from .tokenize import InputError

__all__ = ["BACKENDS", "BackendError", "Chain", "ChainResult", "ArtifactError", "Manifest", "load_manifest",
           "EarlyExitModel", "Prediction", "POLICIES", "ExitPolicy", "LayerOutputs", "PolicyError", "make_policy",
           "simulate", "InputError"]
