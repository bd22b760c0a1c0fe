"""A short tour of what works: the serializer, on both backends."""

import pickle
import timeit

import execnet
from execnet import gateway_base

report = {
    "nodeid": "testing/test_demo.py::TestDemo::test_case[3]",
    "location": ("testing/test_demo.py", 41, "TestDemo.test_case[3]"),
    "keywords": {"test_case[3]": 1, "TestDemo": 1, "testing": 1},
    "outcome": "failed",
    "longrepr": "E   assert 1 == 2\n" * 120,
    "when": "call",
    "sections": [("Captured stdout call", "hello\n")],
    "duration": 0.0123,
    "user_properties": [],
    "worker_id": "gw1",
}

print(f"execnet {execnet.__version__} from {execnet.__file__}")
print(f"serializer backend: {gateway_base.BACKEND}")
data = execnet.dumps(report)
assert execnet.loads(data) == report
print(f"a pytest-xdist report: {len(data)} bytes, round trip ok")
n = 20000
for name, dumps, loads in [
    ("execnet", execnet.dumps, execnet.loads),
    ("pickle 5", lambda v: pickle.dumps(v, 5), pickle.loads),
]:
    blob = dumps(report)
    td = min(timeit.repeat(lambda: dumps(report), number=n, repeat=3)) / n
    tl = min(timeit.repeat(lambda: loads(blob), number=n, repeat=3)) / n
    print(f"{name:9s} dumps {1 / td:10,.0f}/s   loads {1 / tl:10,.0f}/s")
