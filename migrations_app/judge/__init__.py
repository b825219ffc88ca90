"""The judge as a guardrail: whether its verdicts can be trusted (human labels, Cohen's kappa,
position and length bias: ``calibration``, pure), the labelling services and reads, and the
pointwise judge that scores a sample of each arm's answers in a split (``pointwise``).

The paired judge of shadow mode lives with the shadow pipeline (``shadow.judge``), which calls
it for each pair; its verdicts' sums are read here and by the engine.
"""
