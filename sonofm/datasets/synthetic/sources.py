"""The synthetic sources: one imaging preset (probe, frequency, resolution, gain) per "scanner".

Real corpora differ by scanner as much as by anatomy, so each synthetic organ comes from two
sources whose probe geometry, pulse length, beam width, dynamic range and gain differ. A model
that learns the taxonomy (region → organ → source) must then tell sources apart by texture and
field shape, as it must on real data.

Labels (the same vocabulary for every source):

- ``normal``: no lesion, empty mask;
- ``cyst``: anechoic, round or oval, smooth wall, posterior acoustic enhancement;
- ``benign``: solid, smooth or gently lobulated ellipse (hypoechoic; hyperechoic
  haemangioma-like in the liver), little change behind it;
- ``malignant``: solid, hypoechoic, heterogeneous, spiculated border, posterior shadowing.
"""

from __future__ import annotations

from dataclasses import dataclass

LABELS: tuple[str, ...] = ("normal", "cyst", "benign", "malignant")


@dataclass(frozen=True)
class SyntheticSource:
    """Imaging preset of one synthetic source; distances in mm, frequencies in MHz."""

    name: str
    organ: str
    region: str
    anatomy: str  # which phantom draws it: "breast" | "thyroid" | "liver"
    probe: str  # "linear" | "convex"
    model: str  # probe model string burnt into the image margin
    depth_mm: float
    width_mm: float = 0.0  # linear probes: field width
    radius_mm: float = 0.0  # convex probes: curvature radius of the probe face
    half_angle_deg: float = 0.0  # convex probes: half opening angle of the fan
    freq_mhz: float = 7.5
    axial_res_mm: float = 0.2  # sigma of the pulse envelope (axial PSF)
    lateral_res_mm: float = 0.4  # sigma of the beam at the focus (lateral PSF)
    defocus: float = 2.2  # beam width far from the focus, as a multiple of lateral_res_mm
    focus_frac: float = 0.45  # focal depth as a fraction of depth_mm
    alpha_db: float = 0.5  # tissue attenuation, dB / (cm MHz), one way
    tgc: float = 0.8  # fraction of the mean tissue attenuation the TGC compensates
    dynamic_range_db: float = 55.0
    gain_db: float = 0.0
    noise_db: float = -55.0  # electronic noise power relative to unit-echogenicity tissue
    label_weights: tuple[float, float, float, float] = (0.2, 0.25, 0.3, 0.25)


_SPECS: tuple[SyntheticSource, ...] = (
    SyntheticSource(
        name="synth_breast_linear_a", organ="synth_breast", region="synth_thorax", anatomy="breast",
        probe="linear", model="L12-5", depth_mm=40.0, width_mm=42.0, freq_mhz=10.0, axial_res_mm=0.16,
        lateral_res_mm=0.32, alpha_db=0.7, tgc=0.75, dynamic_range_db=58.0, gain_db=1.0,
        noise_db=-62.0,
    ),
    SyntheticSource(
        name="synth_breast_linear_b", organ="synth_breast", region="synth_thorax", anatomy="breast",
        probe="linear", model="9L4", depth_mm=48.0, width_mm=40.0, freq_mhz=7.0, axial_res_mm=0.26,
        lateral_res_mm=0.5, defocus=2.6, alpha_db=0.75, tgc=0.75, dynamic_range_db=48.0, gain_db=-1.0,
        noise_db=-55.0,
    ),
    SyntheticSource(
        name="synth_thyroid_linear_a", organ="synth_thyroid", region="synth_neck", anatomy="thyroid",
        probe="linear", model="L14-5", depth_mm=36.0, width_mm=40.0, freq_mhz=11.0, axial_res_mm=0.14,
        lateral_res_mm=0.3, alpha_db=0.6, tgc=0.75, dynamic_range_db=60.0, gain_db=0.0,
        noise_db=-58.0,
    ),
    SyntheticSource(
        name="synth_thyroid_linear_b", organ="synth_thyroid", region="synth_neck", anatomy="thyroid",
        probe="linear", model="ML6-15", depth_mm=42.0, width_mm=48.0, freq_mhz=8.0, axial_res_mm=0.22,
        lateral_res_mm=0.45, defocus=2.5, alpha_db=0.6, tgc=0.7, dynamic_range_db=50.0, gain_db=2.0,
        noise_db=-50.0,
    ),
    SyntheticSource(
        name="synth_liver_convex_a", organ="synth_liver", region="synth_abdomen", anatomy="liver",
        probe="convex", model="C5-1", depth_mm=150.0, radius_mm=55.0, half_angle_deg=33.0,
        freq_mhz=3.5, axial_res_mm=0.45, lateral_res_mm=1.0, defocus=2.4, focus_frac=0.5, alpha_db=0.5,
        tgc=0.85, dynamic_range_db=60.0, gain_db=0.0, noise_db=-60.0,
    ),
    SyntheticSource(
        name="synth_liver_convex_b", organ="synth_liver", region="synth_abdomen", anatomy="liver",
        probe="convex", model="C6-2", depth_mm=130.0, radius_mm=40.0, half_angle_deg=38.0,
        freq_mhz=4.5, axial_res_mm=0.6, lateral_res_mm=1.4, defocus=2.0, focus_frac=0.4, alpha_db=0.55,
        tgc=0.8, dynamic_range_db=52.0, gain_db=-1.0, noise_db=-62.0,
    ),
)

#: Every synthetic source by name.
SOURCES: dict[str, SyntheticSource] = {s.name: s for s in _SPECS}

#: Taxonomy entry of every synthetic source (what ``configs/taxonomy.yaml`` lists for them).
SYNTHETIC_SOURCES: dict[str, dict] = {
    s.name: {"organ": s.organ, "region": s.region, "probe": s.probe, "labels": list(LABELS)} for s in _SPECS
}
