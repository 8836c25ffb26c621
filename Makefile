# The two commands of the README. Both set up the environment first
# (tools/setup_env.sh: idempotent, seconds when already done).
#   make demo   # the end-to-end demo on synthetic PASCAL VOC (CPU, about 11 min on 2 cores)
#   make test   # the test suite
# Extra arguments: make demo ARGS="--study"   make test ARGS="-m \"not slow\""
.PHONY: demo test setup

setup:
	@bash tools/setup_env.sh >/dev/null

demo:
	@PY=$$(bash tools/setup_env.sh | tail -n1) && "$$PY" -m demo $(ARGS)

test:
	@PY=$$(bash tools/setup_env.sh | tail -n1) && "$$PY" -m pytest -q tests $(ARGS)
