"""metrics.jsonl: a resumed run drops the records past its checkpoint and goes on counting the
run's wall-clock time from the last record it kept; peak memory by process and device."""

from __future__ import annotations

import json
import time

from mtbert_jax.run.metrics_log import MetricsLog


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_seconds_go_on_from_the_records_a_resumed_run_keeps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, 0, True, started=time.perf_counter() - 100.0)  # loaded for 100 s
    log.write({"step": 10, "loss": {"sst": 1.0}})
    log.write({"step": 20, "loss": {"sst": 0.9}})
    first = _records(path)
    assert 100.0 <= first[0]["run_seconds"] < 110.0
    with open(path, "a") as f:  # written after the checkpoint at step 10, then the process was killed
        f.write(json.dumps({"step": 30, "run_seconds": 500.0}) + "\n")

    resumed = MetricsLog(path, 10, True, started=time.perf_counter() - 7.0)
    assert [r["step"] for r in _records(path)] == [10]
    resumed.write({"step": 20, "loss": {"sst": 0.8}})
    second = _records(path)[-1]
    # the kept record's time plus this process's 7 s; the killed process's step 30 does not count
    assert first[0]["run_seconds"] + 7.0 <= second["run_seconds"] < first[0]["run_seconds"] + 17.0


def test_processes_other_than_the_first_write_nothing(tmp_path):
    MetricsLog(tmp_path / "metrics.jsonl", 0, False).write({"step": 1})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_peak_memory_names_the_largest_device_peak_where_devices_report_one(monkeypatch):
    import jax

    from mtbert_jax.run import metrics_log

    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    host = metrics_log.peak_memory_mib()
    assert set(host) == {"peak_host_mib"} and host["peak_host_mib"] > 100  # a CPU backend: the host's alone
    monkeypatch.setattr(jax, "local_devices", lambda: [Device({"peak_bytes_in_use": 3 * 2**20}),
                                                       Device({"peak_bytes_in_use": 5 * 2**20}), Device(None)])
    peaks = metrics_log.peak_memory_mib()
    assert peaks["peak_device_mib"] == 5.0 and peaks["peak_host_mib"] >= host["peak_host_mib"]
