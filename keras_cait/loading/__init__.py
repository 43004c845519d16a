"""Loading: the shipped presets, preset handles, timm repositories, the
`from_preset` dispatch point and the safety checks of files from others."""
