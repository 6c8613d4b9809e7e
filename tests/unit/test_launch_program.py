"""launch/program.py: entrypoint_args as a command line, the entrypoint (script, module,
function) found and checked, and a function's arguments."""

import argparse
import functools
import pickle
import threading

import pytest
from hypothesis import given, settings, strategies as st

from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError
from metaflow_extensions.torchrun.plugins.launch.program import (
    check_step_names,
    Entrypoint,
    entrypoint_argv,
    function_call,
    resolve_entrypoint,
)

pytestmark = pytest.mark.timeout(300)


def test_dict_arguments_keep_order_and_values_untouched():
    value = 'say "hi" \\ to 中文 {"a": [1]}'
    argv = entrypoint_argv(
        {"epochs": 3, "lr": 0.5, "text": value, "verbose": True, "quiet": False, "seed": None,
         "layers": [64, "32"], "--name": "x"}
    )
    assert argv == [
        "--epochs", "3", "--lr", "0.5", "--text", value, "--verbose", "--layers", "64", "32",
        "--name", "x",
    ]


def test_list_arguments_are_passed_as_given():
    assert entrypoint_argv(["pos", "--flag", 3, "--x=1"]) == ["pos", "--flag", "3", "--x=1"]
    assert entrypoint_argv(None) == []


@pytest.mark.parametrize("bad", ["--a 1", b"--a", 5, {1: "x"}, {"": 1}, ["a\0b"], {"text": "a\0b"}, ["\ud800"]])
def test_bad_entrypoint_args_are_refused(bad):
    with pytest.raises(TorchrunArgumentError):
        entrypoint_argv(bad)


@settings(max_examples=200, deadline=None)
@given(
    key=st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True),
    value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1)
    .filter(lambda text: not text.startswith("-")),
)
def test_a_value_reaches_the_program_exactly(key, value):
    parser = argparse.ArgumentParser()
    parser.add_argument(f"--{key}")
    parsed = parser.parse_args(entrypoint_argv({key: value}))
    assert getattr(parsed, key) == value


def test_entrypoint_is_found_from_the_flow_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    script = tmp_path / "sub" / "train.py"
    script.write_text("")
    assert resolve_entrypoint("sub/train.py", None, str(tmp_path)) == (
        "script", str(script), str(tmp_path / "sub"))
    assert resolve_entrypoint(str(script), None, "/elsewhere")[1] == str(script)
    with pytest.raises(TorchrunArgumentError, match=f"looked for {tmp_path}/nope.py"):
        resolve_entrypoint("nope.py", None, str(tmp_path))


def test_module_is_found_from_the_flow_directory(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text("")
    assert resolve_entrypoint(None, "pkg.train", str(tmp_path)) == ("module", "pkg.train", str(tmp_path))
    with pytest.raises(TorchrunArgumentError, match="no module or package 'nopkg'"):
        resolve_entrypoint(None, "nopkg.train", str(tmp_path))
    with pytest.raises(TorchrunArgumentError, match="is not a dotted module name"):
        resolve_entrypoint(None, "pkg/train.py", str(tmp_path))


def top_level_function(x):
    return x


class Holder:
    @staticmethod
    def static_function():
        return 1

    def method(self):
        return 2


def test_top_level_and_static_functions_are_named_by_module(tmp_path):
    assert resolve_entrypoint(top_level_function, None, str(tmp_path)) == Entrypoint(
        "function", f"{__name__}:top_level_function", str(tmp_path)
    )
    assert resolve_entrypoint(Holder.static_function, None, str(tmp_path)).target == (
        f"{__name__}:Holder.static_function"
    )


def nested_function():
    def inner():
        return 1

    return inner


@pytest.mark.parametrize(
    "function, message",
    [
        (lambda: 1, "is a lambda: the workers cannot import it by name"),
        (nested_function(), "is defined inside another function"),
        (Holder().method, "is a bound method"),
        (functools.partial(top_level_function, 1), "is a partial, not a function defined with `def`"),
        (len, "is a builtin_function_or_method, not a function"),
    ],
)
def test_functions_no_worker_can_import_are_refused(tmp_path, function, message):
    with pytest.raises(TorchrunArgumentError, match="Define the function with `def` at the top level") as refused:
        resolve_entrypoint(function, None, str(tmp_path))
    assert message in str(refused.value)


def test_function_arguments():
    assert pickle.loads(function_call({"a": 1, "b": "é"})) == ((), {"a": 1, "b": "é"})
    assert pickle.loads(function_call([1, "x"])) == ((1, "x"), {})
    assert pickle.loads(function_call((1,))) == ((1,), {})
    assert pickle.loads(function_call(None)) == ((), {})
    with pytest.raises(TorchrunArgumentError, match="must be a dict .keyword arguments. or a list"):
        function_call("--epochs 3")
    with pytest.raises(TorchrunArgumentError, match="the keys of a dict are its keyword arguments"):
        function_call({"--epochs": 3})
    with pytest.raises(TorchrunArgumentError, match="entrypoint_args cannot be sent to the workers"):
        function_call([threading.Lock()])


def _step_reading_names(self):
    global assigned_by_the_step
    assigned_by_the_step = [defined_nowhere(x) for x in range(2)]
    return functools.partial(print, len(assigned_by_the_step), self)


def test_a_step_reading_a_name_its_module_lacks_is_refused():
    with pytest.raises(TorchrunArgumentError) as refused:
        check_step_names(_step_reading_names, "train")
    # Found inside a comprehension; builtins, module names and names the step assigns are fine.
    assert str(refused.value).startswith("step train uses defined_nowhere, which its flow file")
    assert "NBRunner writes only the cell that holds the flow class" in str(refused.value)


def _step_reading_known_names(self):
    return pickle.dumps([len(str(step)) for step in (self, _step_reading_names)])


def test_a_step_reading_only_known_names_passes():
    check_step_names(_step_reading_known_names, "train")
