//! The quantities the sensing network measures, each with its canonical unit, physically valid
//! range and resolution.
//!
//! A [`Reading`](crate::Reading) carries a quantity and a value, and the value is always in the
//! quantity's canonical unit: the gateway, the alarm engine and the sinks never guess units.
//!
//! Canonical units follow the Chinese standards the readings are reported against: ambient
//! pollutants as in HJ 633 (µg/m³, CO in mg/m³), toxic gases as in GB/T 50493-2019's annex
//! (mg/m³), combustible gas in %LEL and methane in %vol as in the coal-mine safety rules.
//!
//! The valid range is the span outside which a value cannot be a real measurement of the
//! quantity in this network's environments; a value outside it is kept, flagged
//! [`UncertainReason::OutOfRange`](crate::UncertainReason::OutOfRange), and still evaluated
//! against alarms (an over-range gas reading is the most dangerous reading there is).

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::unit::Unit;

/// Physical description of a quantity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantitySpec {
    /// The unit every reading of this quantity is stored in.
    pub canonical_unit: Unit,
    /// Lowest physically valid value, in the canonical unit.
    pub min: f64,
    /// Highest physically valid value, in the canonical unit.
    pub max: f64,
    /// Smallest meaningful step, in the canonical unit.
    pub resolution: f64,
    /// Molar mass in g/mol, for gases whose ppm and mg/m³ readings convert into each other.
    pub molar_mass: Option<f64>,
    /// Pollutant code of HJ 212-2017 Appendix B, where the standard defines one.
    pub hj212_code: Option<&'static str>,
    /// English label.
    pub label_en: &'static str,
    /// Chinese label.
    pub label_zh: &'static str,
}

macro_rules! quantities {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $key:literal, {
        unit: $unit:ident, min: $min:expr, max: $max:expr, resolution: $res:expr,
        molar_mass: $mm:expr, hj212: $hj:expr, en: $en:literal, zh: $zh:literal $(,)?
    } )*) => {
        /// A measured quantity.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[repr(u16)]
        pub enum Quantity {
            $( $(#[$doc])* #[serde(rename = $key)] $variant = $code, )*
        }

        impl Quantity {
            /// Every quantity, in code order.
            pub const ALL: &'static [Quantity] = &[$(Quantity::$variant),*];

            /// Stable snake_case key used in topics, JSON payloads and configuration files.
            pub const fn key(self) -> &'static str {
                match self { $(Quantity::$variant => $key,)* }
            }

            /// Stable numeric code used in Modbus registers and binary frames.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The quantity with this numeric code.
            pub fn from_code(code: u16) -> Option<Quantity> {
                match code { $($code => Some(Quantity::$variant),)* _ => None }
            }

            /// The quantity with this key.
            pub fn from_key(key: &str) -> Option<Quantity> {
                match key { $($key => Some(Quantity::$variant),)* _ => None }
            }

            /// Canonical unit, valid range, resolution and labels.
            pub const fn spec(self) -> QuantitySpec {
                match self {
                    $(Quantity::$variant => QuantitySpec {
                        canonical_unit: Unit::$unit,
                        min: $min,
                        max: $max,
                        resolution: $res,
                        molar_mass: $mm,
                        hj212_code: $hj,
                        label_en: $en,
                        label_zh: $zh,
                    },)*
                }
            }
        }
    };
}

// Molar masses: IUPAC standard atomic weights (C 12.011, H 1.008, N 14.007, O 15.999,
// S 32.06), summed per formula.
quantities! {
    /// Ambient air temperature (meteorological; record extremes on Earth lie within the range).
    AirTemperature = 1, "air_temperature", {
        unit: DegreeCelsius, min: -90.0, max: 60.0, resolution: 0.1,
        molar_mass: None, hj212: Some("a01001"), en: "Air temperature", zh: "气温",
    }
    /// Relative humidity of air.
    RelativeHumidity = 2, "relative_humidity", {
        unit: PercentRelativeHumidity, min: 0.0, max: 100.0, resolution: 0.1,
        molar_mass: None, hj212: Some("a01002"), en: "Relative humidity", zh: "相对湿度",
    }
    /// Station air pressure (not reduced to sea level; the range covers high plateaus).
    AirPressure = 3, "air_pressure", {
        unit: HectoPascal, min: 300.0, max: 1100.0, resolution: 0.1,
        molar_mass: None, hj212: Some("a01006"), en: "Air pressure", zh: "气压",
    }
    /// Wind speed.
    WindSpeed = 4, "wind_speed", {
        unit: MetrePerSecond, min: 0.0, max: 90.0, resolution: 0.1,
        molar_mass: None, hj212: Some("a01007"), en: "Wind speed", zh: "风速",
    }
    /// Direction the wind blows from, clockwise from north.
    WindDirection = 5, "wind_direction", {
        unit: Degree, min: 0.0, max: 360.0, resolution: 1.0,
        molar_mass: None, hj212: Some("a01008"), en: "Wind direction", zh: "风向",
    }
    /// Rainfall amount accumulated over the reporting interval.
    Rainfall = 6, "rainfall", {
        unit: Millimetre, min: 0.0, max: 2_000.0, resolution: 0.1,
        molar_mass: None, hj212: None, en: "Rainfall", zh: "降雨量",
    }
    /// Rainfall intensity.
    RainfallIntensity = 7, "rainfall_intensity", {
        unit: MillimetrePerHour, min: 0.0, max: 2_500.0, resolution: 0.1,
        molar_mass: None, hj212: None, en: "Rainfall intensity", zh: "雨强",
    }
    /// Fine particulate matter (aerodynamic diameter ≤ 2.5 µm).
    Pm25 = 8, "pm2_5", {
        unit: MicrogramPerCubicMetre, min: 0.0, max: 5_000.0, resolution: 1.0,
        molar_mass: None, hj212: Some("a34004"), en: "PM2.5", zh: "细颗粒物PM2.5",
    }
    /// Inhalable particulate matter (aerodynamic diameter ≤ 10 µm).
    Pm10 = 9, "pm10", {
        unit: MicrogramPerCubicMetre, min: 0.0, max: 20_000.0, resolution: 1.0,
        molar_mass: None, hj212: Some("a34002"), en: "PM10", zh: "可吸入颗粒物PM10",
    }
    /// Sulphur dioxide.
    So2 = 10, "so2", {
        unit: MicrogramPerCubicMetre, min: 0.0, max: 2_000_000.0, resolution: 1.0,
        molar_mass: Some(64.058), hj212: Some("a21026"), en: "SO2", zh: "二氧化硫",
    }
    /// Nitrogen dioxide.
    No2 = 11, "no2", {
        unit: MicrogramPerCubicMetre, min: 0.0, max: 2_000_000.0, resolution: 1.0,
        molar_mass: Some(46.005), hj212: Some("a21004"), en: "NO2", zh: "二氧化氮",
    }
    /// Carbon monoxide.
    Co = 12, "co", {
        unit: MilligramPerCubicMetre, min: 0.0, max: 20_000.0, resolution: 0.01,
        molar_mass: Some(28.010), hj212: Some("a21005"), en: "CO", zh: "一氧化碳",
    }
    /// Ozone.
    O3 = 13, "o3", {
        unit: MicrogramPerCubicMetre, min: 0.0, max: 20_000.0, resolution: 1.0,
        molar_mass: Some(47.997), hj212: Some("a05024"), en: "O3", zh: "臭氧",
    }
    /// Combustible gas as a fraction of its lower explosive limit (catalytic or IR detectors).
    CombustibleGas = 14, "combustible_gas", {
        unit: PercentLel, min: 0.0, max: 100.0, resolution: 0.1,
        molar_mass: None, hj212: None, en: "Combustible gas", zh: "可燃气体",
    }
    /// Methane by volume, as the coal-mine safety rules state their limits.
    Methane = 15, "methane", {
        unit: PercentVolume, min: 0.0, max: 100.0, resolution: 0.01,
        molar_mass: Some(16.043), hj212: Some("a05002"), en: "Methane", zh: "甲烷",
    }
    /// Hydrogen sulphide.
    H2s = 16, "h2s", {
        unit: MilligramPerCubicMetre, min: 0.0, max: 15_000.0, resolution: 0.01,
        molar_mass: Some(34.076), hj212: Some("a21028"), en: "H2S", zh: "硫化氢",
    }
    /// Oxygen by volume (deficiency and enrichment alarms).
    Oxygen = 17, "oxygen", {
        unit: PercentVolume, min: 0.0, max: 100.0, resolution: 0.1,
        molar_mass: Some(31.998), hj212: None, en: "Oxygen", zh: "氧气",
    }
    /// Carbon dioxide.
    Co2 = 18, "co2", {
        unit: PartsPerMillion, min: 0.0, max: 1_000_000.0, resolution: 1.0,
        molar_mass: Some(44.009), hj212: None, en: "CO2", zh: "二氧化碳",
    }
    /// Water level (stage) above the gauge's datum; elevations of plateau rivers fit the range.
    WaterLevel = 19, "water_level", {
        unit: Metre, min: -500.0, max: 9_000.0, resolution: 0.001,
        molar_mass: None, hj212: None, en: "Water level", zh: "水位",
    }
    /// Volumetric flow; negative in tidal reaches where the flow reverses.
    Flow = 20, "flow", {
        unit: CubicMetrePerSecond, min: -500_000.0, max: 500_000.0, resolution: 0.001,
        molar_mass: None, hj212: None, en: "Flow", zh: "流量",
    }
    /// Smoke obscuration (optical smoke detectors).
    SmokeObscuration = 21, "smoke_obscuration", {
        unit: PercentPerMetre, min: 0.0, max: 100.0, resolution: 0.01,
        molar_mass: None, hj212: None, en: "Smoke obscuration", zh: "烟雾遮光率",
    }
    /// Tilt from the vertical (structures, slopes, poles).
    Tilt = 22, "tilt", {
        unit: Degree, min: -90.0, max: 90.0, resolution: 0.01,
        molar_mass: None, hj212: None, en: "Tilt", zh: "倾角",
    }
    /// Vibration velocity, RMS (ISO 10816 style severity).
    Vibration = 23, "vibration", {
        unit: MillimetrePerSecond, min: 0.0, max: 1_000.0, resolution: 0.01,
        molar_mass: None, hj212: None, en: "Vibration", zh: "振动",
    }
    /// Temperature of a surface, process or room (heat detectors in a fire read far beyond
    /// any air temperature, so this is a quantity of its own).
    Temperature = 24, "temperature", {
        unit: DegreeCelsius, min: -200.0, max: 1_500.0, resolution: 0.1,
        molar_mass: None, hj212: None, en: "Temperature", zh: "温度",
    }
}

impl Quantity {
    /// The unit readings of this quantity are stored in.
    pub const fn canonical_unit(self) -> Unit {
        self.spec().canonical_unit
    }

    /// Whether `value` (in the canonical unit) lies within the physically valid range.
    pub fn in_range(self, value: f64) -> bool {
        let spec = self.spec();
        value >= spec.min && value <= spec.max
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_keys_are_unique_and_round_trip() {
        for (i, a) in Quantity::ALL.iter().enumerate() {
            assert_eq!(Quantity::from_code(a.code()), Some(*a));
            assert_eq!(Quantity::from_key(a.key()), Some(*a));
            let s = a.spec();
            assert!(s.min < s.max, "{a}: empty range");
            assert!(
                s.resolution > 0.0 && s.resolution < s.max - s.min,
                "{a}: resolution"
            );
            for b in &Quantity::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
                assert_ne!(a.key(), b.key());
                if let (Some(x), Some(y)) = (s.hj212_code, b.spec().hj212_code) {
                    assert_ne!(x, y);
                }
            }
        }
    }

    #[test]
    fn range_bounds_are_inclusive() {
        assert!(Quantity::RelativeHumidity.in_range(100.0));
        assert!(!Quantity::RelativeHumidity.in_range(100.1));
        assert!(!Quantity::CombustibleGas.in_range(-0.5));
        assert!(!Quantity::CombustibleGas.in_range(f64::NAN));
    }
}
