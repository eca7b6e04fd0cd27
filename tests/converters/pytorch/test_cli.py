"""`kindling convert torch` end to end: convert, --check, run; bad input fails naming the problem
and writes nothing; torch is never imported."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import kindling
from torch_nets import randomize, torch_lenet, torch_outputs

NETS = Path(__file__).resolve().parents[2] / "torch_nets.py"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def lenet_file(torch, path):
    reference = randomize(torch, torch_lenet(torch))
    torch.save({"epoch": 5, "state_dict": reference.state_dict()}, path)
    return reference


def test_convert_check_and_run_a_pytorch_lenet(torch, tmp_path):
    reference = lenet_file(torch, tmp_path / "lenet.pth")
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", torch_outputs(torch, reference, x))
    out = tmp_path / "lenet.kdl"
    r = cli("convert", "torch", "--weights", tmp_path / "lenet.pth", "--model-def", f"{NETS}:kindling_lenet",
            "-o", out, "--input", "data=1,1,28,28", "--mean", "0.1307", "--std", "0.3081",
            "--check", tmp_path / "x.npy", tmp_path / "expected.npy")
    assert r.returncode == 0, r.stderr
    assert "note: took the state_dict under 'state_dict' (the file also holds epoch)" in r.stdout
    assert "check: max abs difference" in r.stdout and "431,080 parameters" in r.stdout
    model = kindling.load(out)
    meta = model.metadata
    assert meta["source"]["framework"] == "pytorch" and meta["source"]["files"][0]["path"] == "lenet.pth"
    assert len(meta["source"]["files"][0]["sha256"]) == 64
    assert meta["input_shape"] == [-1, 1, 28, 28] and meta["preprocessing"] == {"mean": [0.1307], "std": [0.3081]}
    r = cli("run", out, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    assert np.abs(np.load(tmp_path / "y.npy") - np.load(tmp_path / "expected.npy")).max() <= 1e-5


def test_a_factory_by_module_name_and_a_partial_load(torch, tmp_path):
    lenet_file(torch, tmp_path / "lenet.pt")
    (tmp_path / "mynets.py").write_text(
        "from torch_nets import kindling_lenet\n"
        "def digits():\n"
        "    model = kindling_lenet()\n"
        "    model.find('fc2').name = 'fc2_digits'\n"
        "    return model\n")
    env = {**os.environ, "PYTHONPATH": str(NETS.parent)}
    out = tmp_path / "digits.kdl"
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "torch", "--weights", "lenet.pt",
                        "--model-def", "mynets:digits", "-o", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, env=env)
    assert r.returncode == 1 and "no weights for modules fc2_digits (match_all=True)" in r.stderr
    assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "torch", "--weights", "lenet.pt",
                        "--model-def", "mynets:digits", "-o", str(out), "--partial"], capture_output=True, text=True,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "note: kept their initial weights (not in the file): fc2_digits" in r.stdout
    assert "note: the file's fc2 matched no module" in r.stdout
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "torch", "--weights", "lenet.pt",
                        "--model-def", "mynets:digits", "-o", str(out), "--rename", "fc2=fc2_digits"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0 and "note: kept" not in r.stdout, r.stderr


def test_bad_input_names_the_problem_and_writes_nothing(torch, tmp_path):
    lenet_file(torch, tmp_path / "lenet.pt")
    out = tmp_path / "out.kdl"
    (tmp_path / "broken.pt").write_bytes((tmp_path / "lenet.pt").read_bytes()[:2000])
    cases = [
        (["--weights", tmp_path / "lenet.pt", "--model-def", "no_such_module:f"],
         "--model-def 'no_such_module:f': cannot import no_such_module"),
        (["--weights", tmp_path / "lenet.pt", "--model-def", f"{NETS}:nothing"], "has no callable 'nothing'"),
        (["--weights", tmp_path / "lenet.pt", "--model-def", f"{NETS}:randomize"], "calling it with no arguments failed"),
        (["--weights", tmp_path / "broken.pt", "--model-def", f"{NETS}:kindling_lenet"], "broken.pt: truncated"),
        (["--weights", tmp_path / "lenet.pt", "--model-def", f"{NETS}:kindling_lenet", "--input", "data=1,3,28,28"],
         "the model does not take inputs"),
    ]
    for args, message in cases:
        r = cli("convert", "torch", *args, "-o", out)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
        assert not out.exists()


def test_convert_torch_never_imports_torch(torch, tmp_path):
    lenet_file(torch, tmp_path / "lenet.pt")
    code = f"""
import sys
class Block:
    def find_spec(self, name, *a):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from kindling.cli import main
code = main(["convert", "torch", "--weights", {str(tmp_path / 'lenet.pt')!r}, "--model-def",
             {f'{NETS}:kindling_lenet'!r}, "-o", {str(tmp_path / 'out.kdl')!r}])
print("exit", code, "torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "exit 0 False" in r.stdout, r.stdout + r.stderr
