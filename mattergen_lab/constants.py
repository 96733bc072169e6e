"""Fixed facts of MatterGen's representation (spec §1.4, §2.3, §2.4).

Atom types are stored as atomic numbers Z (H = 1). During diffusion the value ``MASK_Z = 101`` is the
absorbing "mask" state. The network's 101 logits are indexed by class = Z - 1, so class 100 is MASK.
"""

from __future__ import annotations

MAX_ATOMIC_NUM = 100
NUM_CLASSES = MAX_ATOMIC_NUM + 1  # 100 elements + MASK
MASK_Z = MAX_ATOMIC_NUM + 1  # atomic-number value of the mask token
MASK_CLASS = MAX_ATOMIC_NUM  # logit index of the mask token

#: Average atomic density of the training data (atoms / Å^3); the lattice prior's cubic mean.
AVERAGE_DENSITY = 0.05771451654022283

#: Elements the official sampler may generate (spec §1.4): Z = 1, 3-9, 11-17, 19-35, 37-42, 44-53,
#: 55-60, 62-83. Noble gases, Tc, Pm and Z >= 84 are excluded.
SELECTED_ATOMIC_NUMBERS: tuple[int, ...] = tuple(
    [1]
    + list(range(3, 10))
    + list(range(11, 18))
    + list(range(19, 36))
    + list(range(37, 43))
    + list(range(44, 54))
    + list(range(55, 61))
    + list(range(62, 84))
)

#: Largest primitive cell in the training data (MP-20 / Alex-MP-20).
MAX_TRAINING_ATOMS = 20

#: Number-of-atoms distribution used by the official sampler (``ALEX_MP_20``, spec §1.5).
ALEX_MP_20_NUM_ATOMS: dict[int, float] = {
    1: 0.000230, 2: 0.002804, 3: 0.019342, 4: 0.163634, 5: 0.046681,
    6: 0.078080, 7: 0.027248, 8: 0.115040, 9: 0.048984, 10: 0.126205,
    11: 0.035774, 12: 0.145913, 13: 0.006003, 14: 0.028628, 15: 0.020228,
    16: 0.044732, 17: 0.001303, 18: 0.038699, 19: 0.007014, 20: 0.043457,
}

assert len(SELECTED_ATOMIC_NUMBERS) == 76

#: The collapse floor of every relaxation (Å³ per atom): MP-20's densest crystal has 5.8 Å³/atom. Below it a crystal
#: is collapsing and a force field's neighbour graph grows without bound (a 7-atom O cell at 1.4 Å³/atom took
#: CHGNet to 4.8 GB; a 1-Å cubic Na cell passed 6 GB in the bulk-modulus oracle).
MIN_VOLUME_PER_ATOM = 3.0
