"""The pytest plugin of latte-ref: ``pytest --latte-impl pkg.module:function --latte-form causal``.

Runs the conformance suite of :func:`latte_ref.testing.validate` as one test per
case (``latte-conformance::<case>``), next to the project's own tests, so that a
kernel repository can put the suite in its CI. Registered through the ``pytest11``
entry point; without ``--latte-impl`` it adds its options and does nothing else.
It is a top-level module of its own so that loading it imports neither latte_ref
nor NumPy: an ordinary pytest run pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

__all__ = [
    "LatteCaseItem",
    "LatteSuite",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
]

_FORMS = ("bidirectional", "causal", "step")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("latte", "Latte conformance suite (latte-ref)")
    group.addoption("--latte-impl", metavar="MODULE:FUNCTION", default=None, help="Latte implementation to validate")
    group.addoption("--latte-form", choices=_FORMS, default="causal", help="its contract (default: causal)")
    group.addoption("--latte-backend", default="numpy", help="latte-ref backend of its inputs (default: numpy)")
    group.addoption("--latte-device", default=None, help="device name (default: the backend's first)")
    group.addoption("--latte-dtype", default="float32", help="dtype of its inputs (default: float32)")
    group.addoption(
        "--latte-layout", choices=("BTHD", "BHTD"), default="BTHD", help="BHTD for head-first implementations"
    )
    group.addoption("--latte-with-mask", action="store_true", help="it takes mask= (adds padding cases)")
    group.addoption(
        "--latte-with-state", action="store_true", help="it takes state=/return_state= (adds cut-point cases)"
    )
    group.addoption(
        "--latte-with-segments",
        action="store_true",
        help="it takes segment_ids= (runs the packed cases, which are otherwise skipped)",
    )
    group.addoption(
        "--latte-grad",
        action="store_true",
        help="also compare its gradients by q, k, v with the definition's (torch or jax; adds the tied-key cases)",
    )
    group.addoption("--latte-seed", type=int, default=0, help="suite seed (default: 0)")
    group.addoption(
        "--latte-save-dir",
        metavar="DIR",
        default=None,
        help="where a failing case's inputs (.npz) go (default: a folder of pytest's own temporary tree)",
    )
    group.addoption(
        "--latte-logit-scale",
        default=None,
        metavar="S",
        help="it computes Latte(S*q, S*k): a number, or inv_sqrt_l for 1/sqrt(L) (default: 1)",
    )
    group.addoption(
        "--latte-batch-axes",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="feed every case with exactly this many batch axes (default: each case's own)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With ``--latte-impl``: resolve the candidate and check the options once, before collecting.

    A name that does not resolve or an option that cannot run is one :class:`pytest.UsageError`
    (a line or two, no traceback), not a failure of every case.
    """
    if config.getoption("latte_impl") is None:
        return
    from latte_ref.testing import UsageError, load_candidate
    from latte_ref.testing.options import check_arguments

    options = _options(config)
    try:
        load_candidate(options["impl"])
        check_arguments(
            options["form"],
            options["layout"],
            options["backend"],
            options["dtype"],
            options["logit_scale"],
            options["batch_axes"],
            None,
            with_segments=options["with_segments"],
            grad=options["grad"],
        )
    except UsageError as exc:
        raise pytest.UsageError(f"--latte-impl {options['impl']}: {exc}") from None


class LatteCaseFailure(Exception):
    """A case outside its tolerance; the message is the report."""


class LatteSuite(pytest.Collector):
    """The conformance cases for the candidate named on the command line."""

    def collect(self) -> Iterator[pytest.Item]:
        from latte_ref.testing.cases import case_names, skipped_cases

        options = _options(self.config)
        flags = {key: options[key] for key in ("with_mask", "with_state", "with_segments")}
        for name in case_names(options["form"], **flags, with_grad=options["grad"]):
            yield LatteCaseItem.from_parent(self, name=name)
        for name, why in skipped_cases(options["form"], **flags).items():
            yield LatteCaseItem.from_parent(self, name=name, skipped=why)


class LatteCaseItem(pytest.Item):
    """One conformance case, passing when the candidate is within tolerance; skipped, with why, when it cannot run."""

    def __init__(self, *, skipped: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skipped = skipped

    def runtest(self) -> None:
        from latte_ref.testing.validate import validate

        if self.skipped:
            pytest.skip(f"{self.name} {self.skipped.replace('--with-', '--latte-with-')}")
        options = _options(self.config)
        report = validate(options.pop("impl"), cases=[self.name], save_dir=_save_dir(self.config), **options)
        if not report.passed:
            raise LatteCaseFailure(str(report))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, LatteCaseFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"latte conformance: {self.name}"


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect, so they apply to the cases too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("latte_impl") is None:
        return
    suite = LatteSuite.from_parent(session, name="latte-conformance")
    items.extend(suite.collect())


def _save_dir(config: pytest.Config) -> str:
    """``--latte-save-dir``, else ``latte-conformance`` under pytest's temporary tree (which pytest prunes).

    Not the system's temporary folder, where every failing run would leave its arrays behind.
    """
    chosen = config.getoption("latte_save_dir")
    if chosen is not None:
        return str(chosen)
    factory = getattr(config, "_tmp_path_factory", None)  # the tmp_path machinery: absent with -p no:tmpdir
    if factory is None:
        raise pytest.UsageError("--latte-save-dir is needed when pytest's tmpdir plugin is disabled")
    folder = factory.getbasetemp() / "latte-conformance"
    folder.mkdir(exist_ok=True)
    return str(folder)


def _options(config: pytest.Config) -> dict[str, Any]:
    return {
        "impl": config.getoption("latte_impl"),
        "form": config.getoption("latte_form"),
        "backend": config.getoption("latte_backend"),
        "device": config.getoption("latte_device"),
        "dtype": config.getoption("latte_dtype"),
        "layout": config.getoption("latte_layout"),
        "with_mask": config.getoption("latte_with_mask"),
        "with_state": config.getoption("latte_with_state"),
        "with_segments": config.getoption("latte_with_segments"),
        "seed": config.getoption("latte_seed"),
        "logit_scale": config.getoption("latte_logit_scale"),
        "batch_axes": config.getoption("latte_batch_axes"),
        "grad": config.getoption("latte_grad"),
    }
