"""Audio in and out: sounddevice devices, wav files, resampling."""
