#!/usr/bin/env bash
# The main job on kvfp-tiny: collect, train, identify a held-out endpoint log, print the verdict.
# Usage: scripts/demo.sh KVFP_BIN [OUT_DIR]
set -euo pipefail
KVFP=${1:-kvfp}
D=${2:-runs/demo-$(date +%Y%m%d-%H%M%S)}
SCHEMES=(none int8-pertoken int4-pertoken kivi-2 fp8-e4m3 window-256 h2o-0.1-0.1 snapkv-0.5)
S=(); for s in "${SCHEMES[@]}"; do S+=(--scheme "$s"); done
CANDS=$(IFS=,; echo "${SCHEMES[*]}")
SERVED=${SERVED:-kivi-2}
mkdir -p "$D"
echo "== 1. collect: the quick probe suite (seed 0) under ${#SCHEMES[@]} schemes, reference settings"
"$KVFP" collect --model kvfp-tiny "${S[@]}" --probes quick --new-tokens 16 --logits --attn eager --out "$D/train"
echo "== 1b. the same schemes served in bfloat16 with sdpa: kvfp's own replays match its own traces exactly,"
echo "      so without served-like traces a classifier would learn that the right candidate fits perfectly"
"$KVFP" collect --model kvfp-tiny "${S[@]}" --probes quick --new-tokens 16 --dtype bfloat16 --attn sdpa \
    --out "$D/train-bf16"
echo "== 2. train: one classifier per access tier"
"$KVFP" train --data "$D/train" --data "$D/train-bf16" --candidates "$CANDS" --out "$D/classifier"
echo "== 3. an 'endpoint' serving $SERVED in bfloat16 with sdpa answers probes it was not trained on (seed 1)"
"$KVFP" probes generate --model kvfp-tiny --suite quick --seed 1 --out "$D/heldout-probes.jsonl"
"$KVFP" collect --model kvfp-tiny --scheme "$SERVED" --probes "$D/heldout-probes.jsonl" --new-tokens 16 \
    --dtype bfloat16 --attn sdpa --out "$D/endpoint"
"$KVFP" export "$D/endpoint" --format openai-chat --out "$D/endpoint-chat.jsonl"
echo "== 4. identify the endpoint from its OpenAI chat log (top-20 logprobs)"
"$KVFP" identify "$D/endpoint-chat.jsonl" --model kvfp-tiny --classifier "$D/classifier" \
    --probes "$D/heldout-probes.jsonl"
echo "(the endpoint really served: $SERVED)"
