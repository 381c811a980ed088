"""The one-group-alone shapes of an all-int8 repair are judged on checks of their own (review R20 M1): with every
alone shape judged over the limit, the every-group notch that session 19's rule returned is still judged and
returned (before: three alone shapes judged over spent the repair's three checks, and it gave up)."""

from deepslim.search.trials import REPAIR_CHECKS, REPAIR_HEADROOM, notch_shapes, repaired
from tests.search.test_search_repair_notch import _all_int8


def test_alone_shapes_judged_over_leave_the_every_group_notch_its_checks():
    space, ev, policy = _all_int8()
    real = ev.build
    ms = lambda p: real(p, "none")[1]  # noqa: E731
    own = ms(policy)
    limit = own * 0.99  # as the notch test: the policy just over its limit
    alone = notch_shapes(space, policy, 1)[:-1]
    every = space.narrower(policy, 1)
    assert len(alone) > REPAIR_CHECKS and ms(every) <= limit * (1 - REPAIR_HEADROOM)
    over = {str(a.keep) for a in alone}
    judged: list[str] = []

    def build(p, how):  # every alone shape judged 1 % over the limit (a table error on them), the rest as measured
        net, t = real(p, how)
        judged.append(str(p.keep))
        return (net, limit * 1.01) if str(p.keep) in over else (net, t)

    ev.build = build
    fixed = repaired(ev, policy, own, limit)
    assert fixed is not None and fixed == every  # before: None
    assert sum(k in over for k in judged) == REPAIR_CHECKS  # the alone shapes' own checks, then skipped
    assert judged[-1] == str(every.keep)


def test_a_notch_where_one_group_narrows_is_the_every_group_shape_only():
    space, _, policy = _all_int8()
    first, *rest = space.groups
    floor = space.narrower(policy, 99)  # every group at its narrowest option
    only = policy.__class__(**{**policy.__dict__, "keep": {**floor.keep, first.name: policy.keep[first.name]}})
    shapes = notch_shapes(space, only, 1)
    assert shapes == [space.narrower(only, 1)]  # before: [x, x], x counted as an alone shape and skipped once spent
    assert shapes[0].keep[first.name] != only.keep[first.name]
    assert len(notch_shapes(space, policy, 1)) > 2  # several groups narrowing: the alone shapes, then every group
