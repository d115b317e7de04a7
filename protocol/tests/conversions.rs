//! Unit conversions against independently computed and published values.
//!
//! Each expectation names its source; the tolerance is the rounding of that source.

use tianzhong_protocol::Quantity;
use tianzhong_protocol::convert::{
    LoopFault, LoopSpan, ReferenceConditions, from_canonical, loop_current_to_value,
    mg_per_m3_to_ppm, ppm_to_mg_per_m3, to_canonical,
};
use tianzhong_protocol::unit::{ConversionError, Unit};

fn close(actual: f64, expected: f64, rel: f64) -> bool {
    (actual - expected).abs() <= rel * expected.abs().max(1e-12)
}

macro_rules! assert_close {
    ($actual:expr, $expected:expr, $rel:expr) => {{
        let (a, e) = ($actual, $expected);
        assert!(
            close(a, e, $rel),
            "{} = {a}, expected {e} (±{})",
            stringify!($actual),
            $rel
        );
    }};
}

#[test]
fn molar_volume_at_the_reference_states() {
    // 24.465 L/mol at 25 °C and 22.414 L/mol at 0 °C, 101.325 kPa (ideal gas; textbook values).
    assert_close!(
        ReferenceConditions::AMBIENT_25C.molar_volume_l().unwrap(),
        24.465,
        1e-4
    );
    assert_close!(
        ReferenceConditions::STANDARD_0C.molar_volume_l().unwrap(),
        22.414,
        1e-4
    );
}

#[test]
fn ppm_to_mg_per_m3_at_25c_and_101_325_kpa() {
    // Reference conditions: 25 °C (298.15 K), 101.325 kPa.
    let c = ReferenceConditions::AMBIENT_25C;
    // CO: 1 ppm = 1.145 mg/m³ (28.01 / 24.465; the value occupational-hygiene tables quote).
    assert_close!(
        to_canonical(Quantity::Co, 1.0, Unit::PartsPerMillion, &c).unwrap(),
        1.145,
        1e-3
    );
    // SO2: 1 ppm = 2.62 mg/m³ and NO2: 1 ppm = 1.88 mg/m³ (WHO air-quality guidelines'
    // conversion factors at 25 °C), in µg/m³, the canonical unit.
    assert_close!(
        to_canonical(Quantity::So2, 1.0, Unit::PartsPerMillion, &c).unwrap(),
        2620.0,
        2e-3
    );
    assert_close!(
        to_canonical(Quantity::No2, 1.0, Unit::PartsPerMillion, &c).unwrap(),
        1880.0,
        2e-3
    );
    // O3: 1 ppb = 1.962 µg/m³ at 25 °C (47.998 / 24.465).
    assert_close!(
        to_canonical(Quantity::O3, 1.0, Unit::PartsPerBillion, &c).unwrap(),
        1.962,
        1e-3
    );
    // And back: 1.145 mg/m³ CO is 1 ppm.
    assert_close!(mg_per_m3_to_ppm(1.145, 28.010, &c).unwrap(), 1.0, 1e-3);
}

#[test]
fn ppm_to_mg_per_m3_at_0c_matches_chinese_detector_practice() {
    // gas_thresholds.csv, "Chinese portable-detector practice": CO 24 ppm (30 mg/m³) and
    // 160 ppm (200 mg/m³); H2S 10 mg/m³ written as 6 ppm (rounded down from 6.58). These pairs
    // hold at 0 °C, 101.325 kPa (22.4 L/mol), the state those tables use.
    let c = ReferenceConditions::STANDARD_0C;
    assert_close!(ppm_to_mg_per_m3(24.0, 28.010, &c).unwrap(), 30.0, 5e-3);
    assert_close!(ppm_to_mg_per_m3(160.0, 28.010, &c).unwrap(), 200.0, 5e-3);
    assert_close!(mg_per_m3_to_ppm(10.0, 34.076, &c).unwrap(), 6.58, 5e-3);
}

#[test]
fn volume_fractions() {
    let c = ReferenceConditions::default();
    // Coal-mine maximum for CO: 0.0024 % = 24 ppm (gas_thresholds.csv).
    assert_close!(
        Unit::PercentVolume
            .convert(0.0024, Unit::PartsPerMillion)
            .unwrap(),
        24.0,
        1e-9
    );
    // CO2 stop-work limit 1.5 % = 15 000 ppm, canonical CO2 unit ppm.
    assert_close!(
        to_canonical(Quantity::Co2, 1.5, Unit::PercentVolume, &c).unwrap(),
        15_000.0,
        1e-9
    );
    // Methane reported in ppm by a laser detector: 10 000 ppm = 1.0 %vol.
    assert_close!(
        to_canonical(Quantity::Methane, 10_000.0, Unit::PartsPerMillion, &c).unwrap(),
        1.0,
        1e-9
    );
}

#[test]
fn temperature_pressure_length_flow() {
    let c = ReferenceConditions::default();
    // °F → °C: (°F − 32) × 5/9. Body temperature, the crossing point, freezing and boiling.
    assert_close!(
        Unit::DegreeFahrenheit
            .convert(98.6, Unit::DegreeCelsius)
            .unwrap(),
        37.0,
        1e-9
    );
    assert_close!(
        Unit::DegreeFahrenheit
            .convert(-40.0, Unit::DegreeCelsius)
            .unwrap(),
        -40.0,
        1e-9
    );
    assert_close!(
        Unit::DegreeCelsius
            .convert(100.0, Unit::DegreeFahrenheit)
            .unwrap(),
        212.0,
        1e-9
    );
    assert!(
        Unit::DegreeFahrenheit
            .convert(32.0, Unit::DegreeCelsius)
            .unwrap()
            .abs()
            < 1e-12
    );
    assert_close!(
        Unit::Kelvin.convert(298.15, Unit::DegreeCelsius).unwrap(),
        25.0,
        1e-9
    );
    // kPa → hPa: standard atmosphere 101.325 kPa = 1013.25 hPa; HJ 212's sample a01006 101.02 kPa.
    assert_close!(
        to_canonical(Quantity::AirPressure, 101.325, Unit::KiloPascal, &c).unwrap(),
        1013.25,
        1e-12
    );
    assert_close!(
        to_canonical(Quantity::AirPressure, 101.02, Unit::KiloPascal, &c).unwrap(),
        1010.2,
        1e-12
    );
    assert_close!(
        from_canonical(Quantity::AirPressure, 1013.25, Unit::KiloPascal, &c).unwrap(),
        101.325,
        1e-12
    );
    // mm → m, and rainfall stays in mm.
    assert_close!(
        to_canonical(Quantity::WaterLevel, 1234.0, Unit::Millimetre, &c).unwrap(),
        1.234,
        1e-12
    );
    assert_close!(
        to_canonical(Quantity::Rainfall, 0.2, Unit::Millimetre, &c).unwrap(),
        0.2,
        1e-12
    );
    // 3600 m³/h = 1 m³/s; 36 km/h = 10 m/s.
    assert_close!(
        to_canonical(Quantity::Flow, 3600.0, Unit::CubicMetrePerHour, &c).unwrap(),
        1.0,
        1e-12
    );
    assert_close!(
        to_canonical(Quantity::WindSpeed, 36.0, Unit::KilometrePerHour, &c).unwrap(),
        10.0,
        1e-12
    );
}

#[test]
fn four_to_twenty_milliamp_loop() {
    // A 0–10 m level transmitter: 4 mA = 0 m, 12 mA = 5 m, 20 mA = 10 m.
    assert_eq!(
        loop_current_to_value(4.0, 0.0, 10.0),
        Ok((0.0, LoopSpan::Within))
    );
    assert_eq!(
        loop_current_to_value(12.0, 0.0, 10.0),
        Ok((5.0, LoopSpan::Within))
    );
    assert_eq!(
        loop_current_to_value(20.0, 0.0, 10.0),
        Ok((10.0, LoopSpan::Within))
    );
    // A −20…+80 °C transmitter at 8 mA reads 5 °C.
    assert_eq!(
        loop_current_to_value(8.0, -20.0, 80.0),
        Ok((5.0, LoopSpan::Within))
    );
    // NE 43: 3.8 mA is a measurement below range (value extrapolated), 20.5 mA above.
    let (v, span) = loop_current_to_value(3.8, 0.0, 16.0).unwrap();
    assert_close!(v, -0.2, 1e-9);
    assert_eq!(span, LoopSpan::Below);
    assert_eq!(
        loop_current_to_value(20.5, 0.0, 16.0).unwrap().1,
        LoopSpan::Above
    );
    // NE 43 failure information: ≤ 3.6 mA and ≥ 21.0 mA are faults, never values.
    for ma in [0.0, 3.5, 3.6] {
        assert_eq!(
            loop_current_to_value(ma, 0.0, 10.0),
            Err(ConversionError::LoopFault(LoopFault::Low { milliamps: ma }))
        );
    }
    for ma in [21.0, 22.0, 24.0] {
        assert_eq!(
            loop_current_to_value(ma, 0.0, 10.0),
            Err(ConversionError::LoopFault(LoopFault::High {
                milliamps: ma
            }))
        );
    }
    assert!(matches!(
        loop_current_to_value(12.0, 5.0, 5.0),
        Err(ConversionError::InvalidParameter(_))
    ));
}

#[test]
fn impossible_conversions_say_why() {
    let c = ReferenceConditions::default();
    assert!(matches!(
        to_canonical(Quantity::Co, 1.0, Unit::Metre, &c),
        Err(ConversionError::IncompatibleUnits {
            from: Unit::Metre,
            to: Unit::MilligramPerCubicMetre
        })
    ));
    // PM2.5 is a mass of particles, not a gas: no molar mass, no ppm.
    assert_eq!(
        to_canonical(Quantity::Pm25, 1.0, Unit::PartsPerMillion, &c),
        Err(ConversionError::NoMolarMass)
    );
    let bad = ReferenceConditions {
        temperature_k: 0.0,
        pressure_kpa: 101.325,
    };
    assert!(matches!(
        ppm_to_mg_per_m3(1.0, 28.0, &bad),
        Err(ConversionError::InvalidParameter(_))
    ));
    assert_eq!(
        to_canonical(Quantity::Co, f64::INFINITY, Unit::PartsPerMillion, &c),
        Err(ConversionError::NotFinite)
    );
    let msg = to_canonical(Quantity::Co, 1.0, Unit::Metre, &c)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("m") && msg.contains("mg/m3"), "{msg}");
}
