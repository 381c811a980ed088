"""The forward peak counts each activation from the operator that first writes it: an in-place operator writing it
again does not move its birth, and an operator writing the input batch in place adds nothing (the caller holds it)."""

from deepslim.analysis._training_peak import OpRecord, activation_peak


def test_an_in_place_rewrite_keeps_the_activation_alive_from_its_first_write():
    ops = [OpRecord(writes={"a": 100}, workspace=200),  # a born here, with 200 B of scratch: 300 B
           OpRecord(reads={"a"}, writes={"a": 100}),  # in place (relu_): same storage, nothing new
           OpRecord(reads={"a"}, writes={"b": 50})]  # fmt: skip
    forward, _ = activation_peak(ops, inputs={"x": 10}, outputs={"b"}, saved=set())
    assert forward == 10 + 300  # the batch plus a and the scratch at the first operator


def test_writing_the_input_batch_in_place_allocates_nothing():
    ops = [OpRecord(reads={"x"}, writes={"x": 400}),  # x.relu_() on the batch the caller holds
           OpRecord(reads={"x"}, writes={"y": 40})]  # fmt: skip
    forward, _ = activation_peak(ops, inputs={"x": 400}, outputs={"y"}, saved=set())
    assert forward == 400 + 40
