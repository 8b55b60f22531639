"""hmmlearn 0.3.3's own GMMHMM tests, run against ``jaxem.GMMHMM``.

``tests/test_gmm_hmm_new.py`` (its ``from ..hmm import GMMHMM`` becomes jaxem's) and
``tests/test_gmm_hmm_multisequence.py`` (``from hmmlearn import hmm`` becomes
``import jaxem as hmm``); its older ``test_gmm_hmm.py`` is marked xfail as a whole upstream
and sets a ``gmms_`` attribute that hmmlearn 0.3.3 no longer has, so it is not run.

All of these tests pass but the sequence-ordering test, which replaces ``monitor_``
before ``fit`` (a strict xfail in ``COMPAT_XFAIL``). The skipped ones pass too (the
upstream non-strict xfail ``test_fit_zero_variance`` as well) but take about 5 CPU
minutes together, almost all of it compiling one program per covariance type and data
shape: ``COMPAT_SKIP`` skips, visibly, the fits, samples and decodes of the covariance
types other than hmmlearn's default ``diag`` (``tests/test_gmmhmm.py`` compares every
type's fit with hmmlearn's to 1e-6) and the model-size sweeps. ``JAXEM_COMPAT_ALL=1``
runs them all.
"""
import os

import pytest

from tests._compat import float64, load_peer_tests  # noqa: F401  (float64: autouse fixture)

COMPAT_XFAIL = {
    "test_gmmhmm_multi_sequence_fit_invariant_to_sequence_ordering":
        "hmmlearn creates monitor_ in __init__; jaxem sets it in fit (scikit-learn's rule "
        "for attributes ending in _), so the test's monitor_ swap before fit finds none",
}

_TIME = "time budget: passes, but compiles per covariance type and shape for many seconds"
_OTHER_TYPES = ("Spherical", "Tied", "Full")
COMPAT_SKIP = {
    **{f"TestGMMHMMWith{t}Covars::{name}": f"{_TIME}; this type's fit is checked against "
       "hmmlearn in tests/test_gmmhmm.py" for t in _OTHER_TYPES
       for name in ("test_sample", "test_init", "test_score_samples_and_decode", "test_fit",
                    "test_fit_sparse_data", "test_fit_zero_variance")},
    **{f"TestGMMHMMWith{t}Covars::test_criterion": f"{_TIME} (4 model sizes x 4000 samples); "
       "aic/bic are checked against hmmlearn in tests/test_gmmhmm.py"
       for t in ("Diag",) + _OTHER_TYPES},
    **{f"TestGMMHMM_MultiSequence::test_chunked[{t}]": f"{_TIME}; the diag case runs"
       for t in ("spherical", "tied", "full")},
}


@pytest.fixture(autouse=True)
def _compat_skip(request):
    if os.environ.get("JAXEM_COMPAT_ALL"):
        return
    node = request.node
    cls = f"{node.cls.__name__}::" if node.cls is not None else ""
    for name in (cls + node.name, cls + node.originalname):
        if name in COMPAT_SKIP:
            pytest.skip(COMPAT_SKIP[name])


load_peer_tests("hmmlearn.tests.test_gmm_hmm_new",
                {"from ..hmm import GMMHMM": "from jaxem import GMMHMM"}, globals())
load_peer_tests("hmmlearn.tests.test_gmm_hmm_multisequence",
                {"from hmmlearn import hmm": "import jaxem as hmm"}, globals())
