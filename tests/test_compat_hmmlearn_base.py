"""hmmlearn 0.3.3's own ``tests/test_base.py``: its ``ConvergenceMonitor`` tests, run
against jaxem's ``monitor_`` class.

The rest of that file constructs no jaxem class: a ``StubHMM`` subclass of hmmlearn's
``BaseHMM`` with hard-coded frame likelihoods, and direct calls of hmmlearn's compiled
``_hmmc`` module. Run here they would test hmmlearn, so they are removed; what they check
(the Wikipedia forward-backward and Viterbi example, ``sample(currstate=)``,
``get_stationary_distribution``, ``_check`` of ``startprob_``/``transmat_``) is checked
on jaxem against hmmlearn in ``tests/test_hmm_dropin.py``.
"""
from tests._compat import float64, load_peer_tests  # noqa: F401  (float64: autouse fixture)

COMPAT_XFAIL = {}

load_peer_tests("hmmlearn.tests.test_base", {
    "from hmmlearn.base import BaseHMM, ConvergenceMonitor":
        "from hmmlearn.base import BaseHMM; from jaxem.estimators.hmm import ConvergenceMonitor",
}, globals())

del StubHMM, TestBaseAgainstWikipedia, TestBaseConsistentWithGMM  # noqa: F821
del test_base_hmm_attributes, test_stationary_distribution  # noqa: F821
