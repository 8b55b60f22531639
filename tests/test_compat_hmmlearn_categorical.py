"""hmmlearn 0.3.3's own ``tests/test_categorical_hmm.py``, run against ``jaxem.CategoricalHMM``
(its ``from hmmlearn import hmm`` becomes ``import jaxem as hmm``)."""
from tests._compat import float64, load_peer_tests  # noqa: F401  (float64: autouse fixture)

COMPAT_XFAIL = {}

load_peer_tests("hmmlearn.tests.test_categorical_hmm",
                {"from hmmlearn import hmm": "import jaxem as hmm"}, globals())
