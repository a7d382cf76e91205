"""Known answers for every hash, ``lp``, HKDF and key-derivation step of docs/ledger-format.md, computed with
``refimpl.py``. Byte strings are lower-case hex; each answer names the section that defines it.
"""

from __future__ import annotations

from typing import Any

import refimpl as R
from vector_runs import HONEST, architecture_of, build_run, config_of

XOF_KEY = R.sha256(R.lp("clicooper/test-vector/xof"))
REJECTION_BOUND = 3 * 2**60  # 2**64 // bound = 5: words with the top nibble 0xF are rejected (1 in 16)


def _primitives() -> dict[str, Any]:
    ikm = bytes([0x0B] * 22)
    rejecting = R.Stream(XOF_KEY, "clicooper/test-vector/rejection")
    rej_values = rejecting.uniform(32, REJECTION_BOUND)
    jcs_in = {"z": 2, "é": 1, "a": "é\n", "b": [1, 0.1, 1e21, 1e-7, -0.0, True, None, {"y": 1, "x": [2.5]}]}
    return {
        "lp/int-int": {"§": "2.2", "parts": [1, 12], "out": R.lp(1, 12).hex()},
        "lp/int-int-swapped": {"§": "2.2", "parts": [11, 2], "out": R.lp(11, 2).hex()},
        "lp/part-types": {"§": "2.2", "parts": [0, -3, "π", {"hex": "00ff"}],
                          "out": R.lp(0, -3, "π", b"\x00\xff").hex()},
        "jcs": {"§": "2.1", "value": jcs_in, "out_utf8": R.jcs(jcs_in).decode("utf-8")},
        "sha256": {"§": "2.3", "in_utf8": "clicooper", "out": R.sha256(b"clicooper").hex()},
        "hkdf-sha256/rfc5869-case3": {"§": "2.4", "ikm": ikm.hex(), "info_utf8": "", "length": 42,
                                      "out": R.hkdf_sha256(ikm, b"", 42).hex()},
        "hkdf-sha256/wm-key": {"§": "2.4", "ikm": XOF_KEY.hex(), "info_utf8": "clicooper/wm-key", "length": 32,
                               "out": R.hkdf_sha256(XOF_KEY, b"clicooper/wm-key").hex()},
        "xof/bytes": {"§": "2.5", "key": XOF_KEY.hex(), "domain": "clicooper/wm-bits",
                      "out": R.Stream(XOF_KEY, "clicooper/wm-bits").read(64).hex()},
        "xof/uniform": {"§": "2.5", "key": XOF_KEY.hex(), "domain": "clicooper/wm-indices", "count": 16,
                        "bound": 7, "out": R.Stream(XOF_KEY, "clicooper/wm-indices").uniform(16, 7)},
        "xof/uniform-rejection": {"§": "2.5", "key": XOF_KEY.hex(), "domain": "clicooper/test-vector/rejection",
                                  "count": 32, "bound": REJECTION_BOUND, "rejected_words": rejecting.rejected,
                                  "out": rej_values},
        "xof/bits": {"§": "2.5", "key": XOF_KEY.hex(), "domain": "clicooper/wm-bits", "count": 13,
                     "out": R.Stream(XOF_KEY, "clicooper/wm-bits").bits(13)},
        "xof/signs": {"§": "2.5", "key": XOF_KEY.hex(), "domain": "clicooper/wm-signs", "count": 10,
                      "out": R.Stream(XOF_KEY, "clicooper/wm-signs").signs(10)},
        "tau": {"§": "9.4", "out": {str(n): R.tau(n) for n in (64, 65, 128, 256, 384)}},
    }


def _identities() -> dict[str, Any]:
    k = R.vector_key("T1")
    seed = R.sha256(R.lp("clicooper/test-vector/key", "T1"))
    return {
        "ed25519/party": {"§": "3.1", "label": "T1", "seed": seed.hex(), "public_key": k.pk.hex(),
                          "party_id": k.party_id, "message_utf8": "clicooper",
                          "signature": k.sign(b"clicooper").hex()},
        "trusted-key-file": {"§": "3.3", "file_utf8": "  " + k.pk.hex().upper() + "\n", "public_key": k.pk.hex()},
    }


def _tensors() -> dict[str, Any]:
    ts = {"b": R.Tensor("F32", [3], [1.0, -2.5, 0.1]), "a": R.Tensor("I64", [2], [7, -1]),
          "c": R.Tensor("F64", [], [3.25]), "u": R.Tensor("U8", [2], [0, 255])}
    desc = {n: {"dtype": t.dtype, "shape": t.shape, "values": t.values} for n, t in ts.items()}
    meta = {"party": "T1", "position": "1"}
    return {
        "segment/canonical": {"§": "6.2", "tensors": desc, "bytes": R.safetensors_bytes(ts).hex(),
                              "commitment": R.segment_commitment(ts)},
        "segment/with-metadata": {"§": "6.3", "metadata": meta, "file": R.safetensors_bytes(ts, meta).hex(),
                                  "commitment": R.segment_commitment(ts)},
    }


def _hashes() -> dict[str, Any]:
    import vector_runs as V

    spec = HONEST["honest-u2"]
    ds = {n: {"torch_dtype": d, "dtype": t.dtype, "shape": t.shape, "values": t.values} for n, (d, t) in V.DATASET.items()}
    msgs = [R.lp("vector-message", 0, 1, 2, k) for k in range(3)]
    return {
        "config-hash": {"§": "8.1", "config": config_of(spec), "out": R.sha256(R.jcs(config_of(spec))).hex()},
        "dataset-commitment": {"§": "8.2", "secret": V.DATASET_SECRET.hex(), "tensors": ds,
                               "ids": V.DATASET_IDS.values,
                               "out": R.dataset_commitment(V.DATASET_SECRET, V.DATASET, V.DATASET_IDS)},
        "architecture-hash": {"§": "8.3", "description": architecture_of(spec),
                              "out": R.sha256(R.jcs(architecture_of(spec))).hex()},
        "transcript/position-form": {"§": "7.3", "messages": [m.hex() for m in msgs],
                                     "out": R.transcript_by_position(msgs)},
        "transcript/name-form": {"§": "7.3", "messages": [m.hex() for m in msgs], "out": R.transcript_by_name(msgs)},
    }


def _ledger() -> dict[str, Any]:
    run = build_run(HONEST["honest-u2"])
    g, s1 = run.entries[0], run.entries[2]
    rid = R.run_id(g)
    anchor1 = R.entry_hash(run.entries[4])
    k = run.keys["T1"]
    msg = R.lp("clicooper-wm", bytes.fromhex(rid), 1, 1, bytes.fromhex(anchor1))
    sig = k.sign(msg)
    key = R.wm_key(sig)
    mark = R.derive_mark(key, 8, 4, 42)
    return {
        "ledger/run-id": {"§": "5.4", "genesis_body_jcs_utf8": R.jcs(R.body_of(g)).decode("utf-8"), "out": rid},
        "ledger/signing-bytes": {"§": "5.4", "entry": s1, "out": R.signing_bytes(s1).hex()},
        "ledger/entry-hash": {"§": "5.4", "line_utf8": R.jcs(s1).decode("utf-8"), "out": R.entry_hash(s1)},
        "wm/anchor": {"§": "9.1", "round": 1, "out": anchor1},
        "wm/message": {"§": "9.1", "run_id": rid, "round": 1, "position": 1, "anchor": anchor1, "out": msg.hex()},
        "wm/signature": {"§": "9.1", "signer": "T1", "out": sig.hex()},
        "wm/key": {"§": "9.1", "out": key.hex()},
        "wm/commitment": {"§": "9.1", "out": R.wm_commitment(sig), "entry_key_commitment": run.entries[6]["key_commitment"]},
        "wm/mark": {"§": "9.2", "key": key.hex(), "n_bits": 8, "subset_size": 4, "num_weights": 42,
                    "bits": mark.bits, "indices": mark.indices, "signs": mark.signs},
    }


def known_answers() -> dict[str, Any]:
    """Every known answer, by name."""
    return {**_primitives(), **_identities(), **_tensors(), **_hashes(), **_ledger()}
