"""Start `runtime.serve` for the tests, optionally with a slowed or failing model (fault injection
from the environment), so limits, deadlines and shutdown can be checked deterministically:

    BERXIT_TEST_STAGE_DELAY_MS=N   every stage run takes N ms longer
    BERXIT_TEST_FAIL_LEN=N         a stage run on rows of N tokens raises
    BERXIT_TEST_NO_STARLETTE=1     starlette cannot be imported
    BERXIT_TEST_LOAD_DELAY_MS=N    loading the model takes N ms longer
"""
import os
import sys
import time

if os.environ.get("BERXIT_TEST_NO_STARLETTE"):
    sys.modules["starlette"] = None  # import fails as if not installed

from runtime import chain  # noqa: E402

_delay = float(os.environ.get("BERXIT_TEST_STAGE_DELAY_MS", "0")) / 1e3
_fail = int(os.environ.get("BERXIT_TEST_FAIL_LEN", "0"))
_advance = chain.Chain.advance


def _patched(self, c):
    if _delay:
        time.sleep(_delay)
    if _fail and int(c.lengths.max()) == _fail:
        raise RuntimeError("injected failure")
    return _advance(self, c)


chain.Chain.advance = _patched

_load_delay = float(os.environ.get("BERXIT_TEST_LOAD_DELAY_MS", "0")) / 1e3
if _load_delay:
    from runtime import model as _model
    _init = _model.EarlyExitModel.__init__

    def _slow_init(self, *a, **k):
        time.sleep(_load_delay)
        _init(self, *a, **k)

    _model.EarlyExitModel.__init__ = _slow_init

if __name__ == "__main__":  # worker processes (--workers) import this file again: patches only
    from runtime.serve import main
    sys.exit(main(sys.argv[1:]))
