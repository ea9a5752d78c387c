from pathlib import Path

import pytest

from assistant.config import CONFIG_DIR, DEFAULT_CONFIG, ConfigError, load_config, parse_override


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("preset", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_is_valid(preset: Path) -> None:
    load_config(preset)


def test_defaults_follow_sesame_and_the_design() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert (config.csm.temperature, config.csm.topk) == (0.9, 50)
    assert config.vad.end_silence_ms == 600
    assert config.barge_in.mode == "off"


def test_misspelt_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "vad:\n  agressiveness: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: unknown key 'vad.agressiveness'"


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'speech'"):
        load_config(write(tmp_path, "speech:\n  rate: 3\n"))


def test_out_of_range_value_names_key_value_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "vad:\n  aggressiveness: 7\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: vad.aggressiveness = 7: ")
    assert "less than or equal to 3" in message
    assert "\n" not in message


def test_wrong_type_in_a_nested_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"llm\.openai\.temperature = 'warm'"):
        load_config(write(tmp_path, "llm:\n  openai:\n    temperature: warm\n"))


def test_choice_outside_the_allowed_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"barge_in\.mode = 'always'.*'off' or 'vad'"):
        load_config(write(tmp_path, "barge_in:\n  mode: always\n"))


def test_cross_field_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": vad: end_silence_ms \(60\) must cover at least three VAD frames"):
        load_config(write(tmp_path, "vad:\n  frame_ms: 20\n  end_silence_ms: 60\n"), ["vad.frame_ms=30"])


def test_secrets_in_yaml_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'llm\.openai\.api_key'"):
        load_config(write(tmp_path, "llm:\n  openai:\n    api_key: sk-123\n"))


def test_secrets_come_from_the_named_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, "llm:\n  openai:\n    api_key_env: MY_KEY\nmqtt:\n  password_env: MQ_PW\n"))
    monkeypatch.delenv("MY_KEY", raising=False)
    assert config.llm.openai.api_key() is None
    monkeypatch.setenv("MY_KEY", "sk-test")
    monkeypatch.setenv("MQ_PW", "hunter2")
    assert config.llm.openai.api_key() == "sk-test"
    assert config.mqtt.password() == "hunter2"


def test_overrides_are_parsed_as_yaml_values(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "vad:\n  aggressiveness: 1\n"),
        [
            "vad.aggressiveness=3",
            "llm.backend=scripted",
            "audio.input_device=2",
            "asr.language=null",
            "llm.scripted.replies=[Hi there., Bye.]",
            "csm.temperature=0",
        ],
    )
    assert config.vad.aggressiveness == 3
    assert config.llm.backend == "scripted"
    assert config.audio.input_device == 2
    assert config.asr.language is None
    assert [r.text for r in config.llm.scripted.replies] == ["Hi there.", "Bye."]
    assert config.csm.temperature == 0


def test_bad_override_names_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["vad.aggressiveness=9"])
    assert str(info.value).startswith(f"{path} (--set vad.aggressiveness=9): vad.aggressiveness = 9: ")
    with pytest.raises(ConfigError, match=r"\(--set vad\.agresiveness=1\): unknown key 'vad\.agresiveness'"):
        load_config(path, ["vad.agresiveness=1"])


def test_malformed_override_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("vad.aggressiveness")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2\)"):
        load_config(write(tmp_path, "vad:\n  a: b: c\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="'vad' is not a section"):
        load_config(write(tmp_path, "vad: 3\n"), ["vad.frame_ms=10"])


def test_the_interrupt_key_is_one_key() -> None:
    assert load_config(None, ["barge_in.key=escape"]).barge_in.key == "escape"
    assert load_config(None, ["barge_in.key=q"]).barge_in.key == "q"
    with pytest.raises(ConfigError, match=r"barge_in.key = 'ctrl-q': must be one character, or one of space"):
        load_config(None, ["barge_in.key=ctrl-q"])


@pytest.mark.parametrize("word", ["off", "vad"])
def test_string_settings_take_on_off_yes_no_as_typed(tmp_path: Path, word: str) -> None:
    assert load_config(None, [f"barge_in.mode={word}"]).barge_in.mode == word
    assert load_config(write(tmp_path, f"barge_in:\n  mode: {word}\n")).barge_in.mode == word


@pytest.mark.parametrize(
    ("word", "value"), [("yes", True), ("on", True), ("true", True), ("no", False), ("off", False)]
)
def test_boolean_settings_still_read_yes_no_on_off(word: str, value: bool) -> None:
    assert load_config(None, [f"mqtt.enabled={word}"]).mqtt.enabled is value


def test_an_unknown_key_from_set_blames_the_set() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["nosuch.key=1"])
    assert str(info.value) == f"{DEFAULT_CONFIG} (--set nosuch.key=1): unknown key 'nosuch'"


def test_a_folder_or_a_binary_file_as_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        load_config(CONFIG_DIR)
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"vad:\n  frame_ms: 30\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(binary)


@pytest.mark.parametrize("url", ["not a url", "localhost:11434/v1", "ftp://host/v1", "http://"])
def test_the_llm_server_address_must_be_an_http_url(url: str) -> None:
    with pytest.raises(ConfigError, match="llm.openai.base_url .*must be an http"):
        load_config(None, [f"llm.openai.base_url={url}"])
    assert load_config(None, ["llm.openai.base_url=http://127.0.0.1:8080/v1"]).llm.openai.base_url


def test_an_unset_broker_password_variable_is_found_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PASSWORD_VAR", raising=False)
    settings = ["mqtt.enabled=true", "mqtt.password_env=NO_SUCH_PASSWORD_VAR"]
    with pytest.raises(ConfigError, match=r"mqtt: .*\$NO_SUCH_PASSWORD_VAR, which is not set"):
        load_config(None, settings)
    monkeypatch.setenv("NO_SUCH_PASSWORD_VAR", "secret")
    assert load_config(None, settings).mqtt.password() == "secret"
    monkeypatch.delenv("NO_SUCH_PASSWORD_VAR")
    assert not load_config(None, ["mqtt.password_env=NO_SUCH_PASSWORD_VAR"]).mqtt.enabled  # off: not needed


def test_the_speech_server_is_chosen_with_its_address() -> None:
    assert load_config(None).csm.backend == "local"
    config = load_config(None, ["csm.backend=server", "csm.server.url=http://gpu-box:8000", "csm.server.timeout_s=5"])
    assert (config.csm.backend, config.csm.server.url, config.csm.server.timeout_s) == (
        "server",
        "http://gpu-box:8000",
        5,
    )
    with pytest.raises(ConfigError, match="csm.backend = 'remote': Input should be 'local' or 'server'"):
        load_config(None, ["csm.backend=remote"])


@pytest.mark.parametrize("url", ["gpu-box:8000", "ws://gpu-box:8000", "http://"])
def test_the_speech_server_address_must_be_an_http_url(url: str) -> None:
    with pytest.raises(ConfigError, match=r"csm.server.url .*must be an http\(s\) URL, like http://gpu-box:8000"):
        load_config(None, ["csm.backend=server", f"csm.server.url={url}"])


def test_an_unset_speech_server_key_variable_is_found_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SPEECH_KEY", raising=False)
    settings = ["csm.backend=server", "csm.server.api_key_env=NO_SUCH_SPEECH_KEY"]
    with pytest.raises(ConfigError, match=r"csm: server.api_key_env names \$NO_SUCH_SPEECH_KEY, which is not set"):
        load_config(None, settings)
    monkeypatch.setenv("NO_SUCH_SPEECH_KEY", "secret")
    assert load_config(None, settings).csm.server.api_key() == "secret"
    monkeypatch.delenv("NO_SUCH_SPEECH_KEY")
    assert load_config(None, ["csm.server.api_key_env=NO_SUCH_SPEECH_KEY"]).csm.backend == "local"  # not needed


def test_a_text_setting_takes_the_value_as_typed_where_yaml_reads_another_kind() -> None:
    config = load_config(
        None,
        [
            "llm.system_prompt=Be brief: one sentence.",  # a mapping to YAML
            "llm.openai.model=3",  # a number
            "mqtt.site_id=true",  # a boolean
            "llm.apology=[sorry]",  # a list
            "csm.mimi=null",  # null stays null for a setting that may be null
            "audio.input_device=2",  # a number or a name: a number stays one
            "audio.output_device=USB: Speaker",  # but a mapping is the name as typed
        ],
    )
    assert config.llm.system_prompt == "Be brief: one sentence."
    assert (config.llm.openai.model, config.mqtt.site_id, config.llm.apology) == ("3", "true", "[sorry]")
    assert config.csm.mimi is None and (config.audio.input_device, config.audio.output_device) == (2, "USB: Speaker")
    assert parse_override("llm.system_prompt=Be brief: one sentence.") == (
        ["llm", "system_prompt"],
        "Be brief: one sentence.",
    )


def test_a_mapping_for_a_text_setting_in_a_file_says_to_quote_it(tmp_path: Path) -> None:
    path = write(tmp_path, "llm:\n  system_prompt: {Be brief: one sentence.}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: llm.system_prompt = {{'Be brief': 'one sentence.'}}: YAML read it as a mapping; "
        "quote the text to keep it as typed"
    )


@pytest.mark.parametrize("name", ["configs/kiosk.yaml", "kiosk.yaml"])
def test_a_preset_is_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    kiosk = load_config(name, ["mqtt.enabled=false"])
    assert kiosk.mqtt.site_id == "lobby"
    assert kiosk.tools.mcp[0].cwd == str(CONFIG_DIR.parent)  # its MCP server, examples/..., is the repository's
    (tmp_path / "configs").mkdir()
    write(tmp_path / "configs", "mqtt:\n  site_id: hall\n").rename(tmp_path / "configs" / "kiosk.yaml")
    assert load_config("configs/kiosk.yaml").mqtt.site_id == "hall"  # a file that is there comes first
    with pytest.raises(ConfigError, match=r"^configs/nope\.yaml: config file not found \(nor among the presets in "):
        load_config("configs/nope.yaml")
