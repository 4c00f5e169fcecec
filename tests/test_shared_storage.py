"""The driver's side of the shared-storage probe: what it sees when a rank wrote on a disk of its own."""

from coati_ray.utils.shared_storage import missing_probes, unshared_message, write_probe


def test_a_probe_the_driver_cannot_read_or_that_holds_another_token_is_reported(tmp_path):
    shared = write_probe(str(tmp_path), "actor-trainer-0", "t0k3n")
    private = write_probe(str(tmp_path), "actor-trainer-1", "t0k3n")
    stale = write_probe(str(tmp_path), "critic-trainer-0", "an-older-run")
    (tmp_path / ".storage-probe" / "actor-trainer-1").unlink()  # written on its node's own disk: not here
    missing = missing_probes([shared, private, stale], "t0k3n")
    assert [r["name"] for r in missing] == ["actor-trainer-1", "critic-trainer-0"]
    assert not (tmp_path / ".storage-probe" / "actor-trainer-0").exists()  # the driver cleans up what it read
    msg = unshared_message(str(tmp_path), missing)
    assert "\n" not in msg and msg.startswith("run error: output_dir")
    assert f"actor-trainer-1 on {shared['host']}, critic-trainer-0 on" in msg and "cannot read it back" in msg
