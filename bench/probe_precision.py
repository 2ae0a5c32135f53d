"""A probe for issue 14 goal 3: does TensorFlow's automatic bfloat16 pass (oneDNN, on a CPU with avx512_bf16) or
oneDNN itself change the CPU a MobileNetV2 train step costs?  The SSDLite backbone's shape (224², batch 8), not the
detector.  One setting a process; run each a few times, interleaved (bench/results/throughput.md, session 8):

    for m in fp32 bf16 fp32 bf16; do TF_USE_LEGACY_KERAS=1 nice -n 5 .venv/bin/python bench/probe_precision.py $m; done
    for v in 1 0 1 0; do TF_ENABLE_ONEDNN_OPTS=$v TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/probe_precision.py fp32; done
"""

import resource
import sys
import time

import tensorflow as tf

STEPS = 20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(mode: str) -> None:
    if mode == "bf16":
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    model = tf.keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None, classes=10)
    optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    images = tf.random.uniform((8, 224, 224, 3))
    labels = tf.one_hot(tf.random.uniform((8,), 0, 10, tf.int32), 10)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.categorical_crossentropy(labels, model(images, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(3):  # trace and first-call optimisation
        step()
    cpu, wall = cpu_seconds(), time.time()
    for _ in range(STEPS):
        loss = step()
    loss.numpy()
    print(f"{mode} wall/step {(time.time() - wall) / STEPS:.3f} cpu/step {(cpu_seconds() - cpu) / STEPS:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fp32")
