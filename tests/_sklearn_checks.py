"""scikit-learn's estimator checks for the mixtures, whose ``fit(X, y)`` reads ``y``.

scikit-learn's checks pass class labels as ``y`` (``0, 1, 2 ...``, also after setting
``n_components = 1``) to every estimator and expect an unsupervised one to ignore them.
jaxem's mixtures read ``y`` as partial labels naming components (scikit-learn's
semi-supervised convention) and refuse a label ``>= n_components`` with a ValueError, so
the checks below fail on ``y`` alone. They are expected failures, and:

* :func:`run_checks` asserts that each expected failure fails for its stated cause (the
  message of the ValueError raised for ``y``, or for the input's domain), so nothing
  else hides behind them;
* :func:`without_y` gives the same estimator with ``fit``'s ``y`` dropped (what
  ``y=None`` runs), on which :func:`run_y_checks` runs exactly these checks: they must
  pass, so what they check (pickling, dtypes, invariances, ...) stays checked.
"""
import pytest
from sklearn.utils.estimator_checks import check_estimator, estimator_checks_generator

import jaxem

Y_IS_LABELS = ("fit's y is partial labels naming components (semi-supervised EM); the "
               "check passes class labels >= n_components")
Y_CAUSE = "y must be -1 (unlabelled) or a component index"

# The checks that fail on y alone (scikit-learn 1.6 - 1.9).
Y_CHECKS = (
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_dtype_object",
    "check_estimators_dtypes",
    "check_estimators_fit_returns_self",
    "check_estimators_overwrite_params",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1feature",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_score_takes_y",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
    "check_sample_weight_equivalence_on_dense_data",
    "check_sample_weights_list",
    "check_sample_weights_not_an_array",
    "check_sample_weights_not_overwritten",
    "check_sample_weights_pandas_series",
    "check_sample_weights_shape",
)


def y_checks_expected_to_fail() -> dict:
    return dict.fromkeys(Y_CHECKS, Y_IS_LABELS)


class _WithoutY:
    """``fit`` and ``fit_predict`` with ``y`` dropped: scikit-learn's convention for an
    unsupervised estimator, and what the mixtures run for ``y=None``."""

    def fit(self, X, y=None, sample_weight=None):
        return super().fit(X, sample_weight=sample_weight)

    def fit_predict(self, X, y=None, sample_weight=None):
        return super().fit_predict(X, sample_weight=sample_weight)


# Module-level classes (so that the pickling checks can pickle them), saved by jaxem
# under their own names.
class GaussianMixtureWithoutY(_WithoutY, jaxem.GaussianMixture):
    pass


class BernoulliMixtureWithoutY(_WithoutY, jaxem.BernoulliMixture):
    pass


class CategoricalMixtureWithoutY(_WithoutY, jaxem.CategoricalMixture):
    pass


class PoissonMixtureWithoutY(_WithoutY, jaxem.PoissonMixture):
    pass


_WITHOUT_Y = {cls.__mro__[2]: cls for cls in (GaussianMixtureWithoutY,
                                               BernoulliMixtureWithoutY,
                                               CategoricalMixtureWithoutY,
                                               PoissonMixtureWithoutY)}


def without_y(estimator):
    """``estimator`` (a jaxem mixture) as its ``y``-ignoring variant, same parameters."""
    return _WITHOUT_Y[type(estimator)](**estimator.get_params())


def _causes(exc):
    while exc is not None:
        yield str(exc)
        exc = exc.__cause__ or exc.__context__


def run_checks(estimator, expected_failed_checks: dict, causes: dict) -> None:
    """scikit-learn's ``check_estimator``: every check passes but the expected failures,
    and each of those fails with ``causes[name]`` (default :data:`Y_CAUSE`) in its
    exception chain."""
    results = check_estimator(estimator, expected_failed_checks=expected_failed_checks,
                              on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results
              if r["status"] == "failed"]
    assert not failed, failed
    for r in results:
        if r["status"] == "xfail":
            cause = causes.get(r["check_name"], Y_CAUSE)
            assert any(cause in text for text in _causes(r["exception"])), (
                r["check_name"], repr(r["exception"])[:300])


def run_y_checks(estimator, expected_failed_checks: dict | None = None) -> None:
    """The checks of :data:`Y_CHECKS` on ``without_y(estimator)``: they pass, but for
    ``expected_failed_checks`` (name -> reason), which are skipped."""
    skip = expected_failed_checks or {}
    ran = set()
    for est, check in estimator_checks_generator(without_y(estimator), mark=None):
        name = getattr(check, "func", check).__name__
        if name not in Y_CHECKS or name in skip:
            continue
        check(est)
        ran.add(name)
    missing = set(Y_CHECKS) - set(skip) - ran
    if missing:
        pytest.fail(f"scikit-learn no longer runs {sorted(missing)}: update Y_CHECKS.")
