"""AxBench's steering factor grids, defined once (spec §2.3, §3.13). Torch-free: configs import them cheaply.

Rank-1 dictionaries steer with factor × the concept's calibrated magnitude over `AXBENCH_FACTORS`; the RePS
family's vectors train on `VECTOR_TRAIN_FACTORS` and steer with the raw factor over `VECTOR_STEER_FACTORS`;
its adapters (LoRA / LoReFT) use `ADAPTER_TRAIN_FACTORS` for both.
"""

AXBENCH_FACTORS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0)
VECTOR_TRAIN_FACTORS = [float(f) for f in range(2, 21, 2)]
VECTOR_STEER_FACTORS = [*VECTOR_TRAIN_FACTORS, 25.0, 30.0, 40.0, 50.0]
ADAPTER_TRAIN_FACTORS = [round(0.2 * i, 1) for i in range(1, 11)]
# HyperSteer (spec §3.14): Δ is added as factor × Δ with no calibration, so its grid sits around the trained 1.0.
HYPERSTEER_FACTORS = [round(0.2 * i, 1) for i in range(10)]
