"""The explorer's cold path imports neither torch nor numba (importing torch costs about 4 s,
which the first map must not wait for), yet uses precompute's error type and library reader.
Ray is imported only by ``--engine ray``: never by the cold path or a local run."""
import json
import subprocess
import sys

import pytest

COLD = ["precompute", "precompute.errors", "precompute.store", "explorer.store", "explorer.ui",
        "explorer.figures", "explorer.state"]


@pytest.mark.parametrize("module", COLD)
def test_a_fresh_interpreter_importing_the_cold_path_has_no_torch(module):
    code = (f"import json, sys, {module}; "
            "print(json.dumps([m for m in ('torch', 'numba', 'ray') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_explorer_raises_the_projects_one_error_type(tmp_path):
    from explorer import store
    from precompute.errors import Task2VecError

    with pytest.raises(Task2VecError, match="no library file"):
        store.open_library(tmp_path / "missing.duckdb")
    not_a_library = tmp_path / "other.duckdb"
    import duckdb

    duckdb.connect(str(not_a_library)).close()
    with pytest.raises(Task2VecError, match="is not a task library"):
        store.open_library(not_a_library)


def test_the_package_names_still_resolve_on_first_use():
    import precompute

    assert precompute.Task2VecError.__module__ == "precompute.errors"
    assert precompute.embed.__module__ == "precompute.task2vec"
    assert precompute.distances.__name__ == "precompute.distances"
    with pytest.raises(AttributeError):
        precompute.no_such_name  # noqa: B018


def test_a_local_run_never_imports_ray():
    """Every stage module and the CLI with --engine local, running units through the local
    executor, leave ray unimported."""
    code = ("import json, sys\n"
            "from precompute import __main__ as cli, build, engine, experts, selection\n"
            "args = cli._parser().parse_args(['matrix', 'demo', '--db', 'x.duckdb', '--quiet'])\n"
            "assert args.engine == 'local'\n"
            "with cli._executor(args) as ex:\n"
            "    out = [r for _, r in ex.run(pow, [engine.Unit(str(i), (i, 2)) for i in range(3)],"
            " progress=False)]\n"
            "assert out == [0, 1, 4], out\n"
            "print(json.dumps('ray' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False
