"""The error tree and the lazy ProcessEngine import."""

import sys

import pytest

import fuseline
from fuseline import errors
from fuseline.errors import FuselineError, MissingDependencyError, error_class_for_code


def all_error_classes() -> list[type[FuselineError]]:
    return [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, FuselineError)
    ]


def test_every_error_has_a_unique_code_that_maps_back() -> None:
    classes = all_error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert error_class_for_code(cls.code) is cls
    assert error_class_for_code("from-a-newer-broker") is FuselineError


def test_errors_also_derive_from_the_matching_builtin() -> None:
    assert issubclass(errors.WorkflowDefinitionError, ValueError)
    assert issubclass(errors.NotFoundError, LookupError)
    assert issubclass(errors.StepTimeoutError, TimeoutError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.BrokerUnavailableError, ConnectionError)
    err = errors.RunNotFoundError("no run x", details={"run_id": "x"})
    assert err.message == "no run x" and err.details == {"run_id": "x"}


def test_error_tree_is_documented_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in all_error_classes():
        assert cls.__name__ in doc and cls.code in doc


def test_process_engine_absent_gives_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import fuseline.engines as engines

    monkeypatch.setitem(sys.modules, "fuseline.worker", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "fuseline\[worker\]"'):
        engines.ProcessEngine  # noqa: B018 - the attribute access is the test
    with pytest.raises(AttributeError):
        engines.NoSuchEngine  # noqa: B018


def test_public_names_are_exported() -> None:
    for name in fuseline.__all__:
        assert hasattr(fuseline, name), name
