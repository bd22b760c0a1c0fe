"""A short tour of what works: the serializer, gateways to child Pythons, RSync."""

import os
import pickle
import tempfile
import time
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
print(f"backend: {gateway_base.BACKEND}")

print("\n-- the serializer")
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

print("\n-- gateways")
group = execnet.Group()
try:
    start = time.perf_counter()
    gws = [group.makegateway("popen") for _ in range(4)]
    print(f"4 popen gateways in {(time.perf_counter() - start) * 1000:.0f} ms: {[gw.id for gw in gws]}")
    info = gws[0]._rinfo()
    print(f"remote: pid {info.pid} (ours {os.getpid()}), python {info.version_info[:3]}")
    squares = group.remote_exec("channel.send(channel.receive() ** 2)")
    squares.send_each(7)
    print(f"each worker squared 7: {squares.receive_each()}")

    def echo(channel):
        for item in channel:
            channel.send(item)

    channel = gws[0].remote_exec(echo)
    n = 20000
    start = time.perf_counter()
    for i in range(n):
        channel.send(i)
        assert channel.receive() == i
    elapsed = time.perf_counter() - start
    print(f"round trip send + receive: {elapsed / n * 1e6:.1f} us")
    channel.close()
    try:
        gws[1].remote_exec("raise ValueError('from the worker')").waitclose()
    except execnet.RemoteError as e:
        print("a remote error arrives with its traceback:", e.formatted.splitlines()[-1])

    print("\n-- RSync")
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "src")
        for i in range(200):
            sub = os.path.join(source, f"dir{i % 10}")
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"file{i}.txt"), "w") as f:
                f.write(f"file {i}\n" * (i + 1))
        targets = [os.path.join(tmp, f"dest{k}") for k in range(2)]
        rsync = execnet.RSync(source, verbose=False)
        for gw, dest in zip(gws[2:], targets):
            rsync.add_target(gw, dest)
        start = time.perf_counter()
        rsync.send()
        elapsed = time.perf_counter() - start
        copied = [sum(len(files) for _, _, files in os.walk(dest)) for dest in targets]
        print(f"200 files to 2 gateways in {elapsed * 1000:.0f} ms: {copied} files arrived")
finally:
    group.terminate(timeout=5)
print("group terminated:", group)
