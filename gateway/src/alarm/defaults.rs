//! Shipped default rules for the common quantities, each number citing its source in the
//! project's domain reference, `shared/reference` (`gas_thresholds.csv`, `aqi.md`,
//! `aqi_hj633.csv`). The `alarm_engine` test reads the copies of those tables kept in
//! `protocol/tests/vectors/` and checks these numbers against them, so they cannot drift.
//!
//! # Mapping onto the four warning levels
//!
//! **Two-stage gas alarms** (GB/T 50493-2019 5.5.2 level 1 / level 2, the vendor tables' AL /
//! AH, the coal-mine rules' alarm / power-off): the first stage is **yellow**, the second
//! **red**. Blue and orange are left for site rules (e.g. an early blue pre-alarm). Where a
//! standard gives one value for both stages (coal-mine T2, T3, T7: alarm = power-off) the rule
//! has red only. **Oxygen** has one set point per side (deficiency 19.5 %vol, enrichment
//! 23.5 %vol), the limit of a breathable atmosphere: red on both sides.
//!
//! **Air quality** (HJ 633): the six AQI categories map onto normal and the four colours by
//! the IAQI at which each category begins:
//!
//! | AQI category | IAQI | level | set point: the concentration at IAQI |
//! |---|---|---|---|
//! | excellent (优), good (良) | 0–100 | normal | — |
//! | lightly polluted (轻度) | > 100 | blue | 100 |
//! | moderately polluted (中度) | > 150 | yellow | 150 |
//! | heavily polluted (重度) | > 200 | orange | 200 |
//! | severely polluted (严重) | > 300 | red | 300 |
//!
//! Excellent and good meet the ambient standard and are not warnings. The engine alarms at
//! `value >= set point`, so a concentration exactly at a breakpoint (still the lower
//! category, IAQI rounded up) already alarms: one breakpoint early, on the safe side.
//! Real-time readings are compared with the 1 h columns for SO2, NO2, CO and O3, and with the
//! 24 h column for PM2.5 and PM10 (the table has no 1 h column for them; `aqi_hj633.csv` notes
//! common practice applies it to hourly values). SO2's 1 h column stops at IAQI 200 (above
//! 800 µg/m³ HJ 633 uses the 24 h value), so SO2 has no red set point. [`AqiTable`] selects
//! the 2012 table or the 2026 revision (PM2.5 and PM10 only differ at IAQI 100).
//!
//! # Ambient monitors and gas detectors
//!
//! SO2, NO2 and CO are both ambient pollutants (HJ 633) and workplace toxic gases (GB/T
//! 50493-2019). The quantity-wide defaults are the ambient ones (their canonical units are
//! HJ 633's); the detector set points apply to nodes in group [`GAS_DETECTOR_GROUP`]. H2S has
//! no AQI, so its detector set points are the quantity-wide default. NH3 and Cl2 are in the
//! reference table but are not quantities of the network.
//!
//! # Not from a standard
//!
//! Deadbands are engineering choices (stated per rule), as are the stale-data time (three
//! poll intervals) and the levels of stale-data and bad-quality alarms (yellow for safety gas
//! detectors, whose failure leaves a site unwatched; blue for ambient monitors). No default
//! has delays or a rate-of-change alarm: the standards give none.

use tianzhong_protocol::{AlarmLevel, Quantity};

use super::rule::{RuleSet, Selector, StaleAfter, ThresholdRule};

/// Node group whose SO2, NO2 and CO channels are workplace gas detectors (GB/T 50493-2019)
/// rather than ambient monitors.
pub const GAS_DETECTOR_GROUP: &str = "gas-detector";
/// Node group of coal-mine methane sensors in the coal-face return airway (T2).
pub const COAL_T2_GROUP: &str = "coal-t2";
/// Node group of coal-mine methane sensors in the intake airway of high-gas mines (T3).
pub const COAL_T3_GROUP: &str = "coal-t3";
/// Node group of coal-mine methane sensors at the upper corner (T0).
pub const COAL_T0_GROUP: &str = "coal-t0";
/// Node group of coal-mine methane sensors in dedicated gas-drainage roadways (T7).
pub const COAL_T7_GROUP: &str = "coal-t7";

/// Version of the default rule set.
pub const DEFAULT_RULES_VERSION: u64 = 1;

/// Which HJ 633 IAQI table the air-quality defaults use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AqiTable {
    /// HJ 633-2012.
    Hj633_2012,
    /// HJ 633-2026 (with GB 3095-2026, in force 2026-03-01): PM2.5 and PM10 IAQI-100
    /// breakpoints lowered.
    #[default]
    Hj633_2026,
}

const POLLS_TO_STALE: StaleAfter = StaleAfter::PollIntervals(3);

fn gas(name: &str, selector: Selector, source: &str) -> ThresholdRule {
    ThresholdRule::new(name, selector)
        .source(source)
        .stale(POLLS_TO_STALE, AlarmLevel::Yellow)
        .bad_quality(AlarmLevel::Yellow)
}

/// The shipped default rules, version [`DEFAULT_RULES_VERSION`].
pub fn default_rules(aqi: AqiTable) -> RuleSet {
    let mut rules = vec![
        // gas_thresholds.csv lines 3-4: GB/T 50493-2019 5.5.2, combustible level 1 <= 25 %LEL,
        // level 2 <= 50 %LEL. Deadband 1 %LEL (ten resolution steps): engineering choice.
        gas(
            "combustible gas",
            Selector::quantity(Quantity::CombustibleGas),
            "GB/T 50493-2019 5.5.2",
        )
        .high(AlarmLevel::Yellow, 25.0)
        .high(AlarmLevel::Red, 50.0)
        .deadband(1.0),
        // gas_thresholds.csv lines 7-8: GB/T 50493-2019 5.5.2, O2 over-oxygen 23.5 %vol,
        // deficiency 19.5 %vol (also the vendor default, line 29). Deadband 0.2 %vol: choice.
        gas(
            "oxygen",
            Selector::quantity(Quantity::Oxygen),
            "GB/T 50493-2019 5.5.2",
        )
        .high(AlarmLevel::Red, 23.5)
        .low(AlarmLevel::Red, 19.5)
        .deadband(0.2),
        // gas_thresholds.csv line 10: GB/T 50493-2019 annex-derived table, H2S AL/AH 10 / 20
        // mg/m³. Deadband 1 mg/m³: choice.
        gas(
            "hydrogen sulphide",
            Selector::quantity(Quantity::H2s),
            "GB/T 50493-2019 annex-derived table (H2S)",
        )
        .high(AlarmLevel::Yellow, 10.0)
        .high(AlarmLevel::Red, 20.0)
        .deadband(1.0),
        // gas_thresholds.csv line 11: CO AL/AH 20 / 40 mg/m³. Deadband 2 mg/m³: choice.
        gas(
            "carbon monoxide detector",
            Selector::group(Quantity::Co, GAS_DETECTOR_GROUP),
            "GB/T 50493-2019 annex-derived table (CO)",
        )
        .high(AlarmLevel::Yellow, 20.0)
        .high(AlarmLevel::Red, 40.0)
        .deadband(2.0),
        // gas_thresholds.csv line 14: SO2 AL/AH 5 / 10 mg/m³ = 5 000 / 10 000 µg/m³ (the
        // canonical unit). Deadband 500 µg/m³: choice.
        gas(
            "sulphur dioxide detector",
            Selector::group(Quantity::So2, GAS_DETECTOR_GROUP),
            "GB/T 50493-2019 annex-derived table (SO2)",
        )
        .high(AlarmLevel::Yellow, 5_000.0)
        .high(AlarmLevel::Red, 10_000.0)
        .deadband(500.0),
        // gas_thresholds.csv line 15: NO2 AL/AH 5 / 10 mg/m³ = 5 000 / 10 000 µg/m³.
        gas(
            "nitrogen dioxide detector",
            Selector::group(Quantity::No2, GAS_DETECTOR_GROUP),
            "GB/T 50493-2019 annex-derived table (NO2)",
        )
        .high(AlarmLevel::Yellow, 5_000.0)
        .high(AlarmLevel::Red, 10_000.0)
        .deadband(500.0),
        // gas_thresholds.csv line 16: coal face / heading T1, alarm >= 1.0, power-off >= 1.5,
        // restore < 1.0 %CH4; the most common position, so the quantity-wide default.
        // Deadband 0: the rules' restore value is the alarm value itself.
        gas(
            "methane (coal face T1)",
            Selector::quantity(Quantity::Methane),
            "煤矿安全规程 sensor table, T1",
        )
        .high(AlarmLevel::Yellow, 1.0)
        .high(AlarmLevel::Red, 1.5),
        // gas_thresholds.csv line 17: return airway T2, alarm = power-off >= 1.0 %CH4.
        gas(
            "methane (return airway T2)",
            Selector::group(Quantity::Methane, COAL_T2_GROUP),
            "煤矿安全规程 sensor table, T2",
        )
        .high(AlarmLevel::Red, 1.0),
        // gas_thresholds.csv line 18: intake airway of high-gas mines T3, >= 0.5 %CH4.
        gas(
            "methane (intake airway T3)",
            Selector::group(Quantity::Methane, COAL_T3_GROUP),
            "煤矿安全规程 sensor table, T3",
        )
        .high(AlarmLevel::Red, 0.5),
        // gas_thresholds.csv line 19: upper corner T0, alarm >= 1.0, power-off >= 1.5 %CH4.
        gas(
            "methane (upper corner T0)",
            Selector::group(Quantity::Methane, COAL_T0_GROUP),
            "煤矿安全规程 sensor table, T0",
        )
        .high(AlarmLevel::Yellow, 1.0)
        .high(AlarmLevel::Red, 1.5),
        // gas_thresholds.csv line 20: gas-drainage roadway T7, >= 2.5 %CH4.
        gas(
            "methane (drainage roadway T7)",
            Selector::group(Quantity::Methane, COAL_T7_GROUP),
            "煤矿安全规程 sensor table, T7",
        )
        .high(AlarmLevel::Red, 2.5),
    ];
    rules.extend(aqi_rules(aqi));
    RuleSet::new(DEFAULT_RULES_VERSION, rules)
}

/// The concentrations at IAQI 100, 150, 200 and 300 (`None` where the column stops), as the
/// blue, yellow, orange and red set points.
fn aqi_rule(name: &str, quantity: Quantity, source: &str, bp: [Option<f64>; 4]) -> ThresholdRule {
    let mut rule = ThresholdRule::new(name, Selector::quantity(quantity))
        .source(source)
        .stale(POLLS_TO_STALE, AlarmLevel::Blue)
        .bad_quality(AlarmLevel::Blue);
    for (level, v) in [
        AlarmLevel::Blue,
        AlarmLevel::Yellow,
        AlarmLevel::Orange,
        AlarmLevel::Red,
    ]
    .into_iter()
    .zip(bp)
    {
        rule.high.set(level, v);
    }
    // Deadband: 5 % of the blue set point, an engineering choice.
    rule.deadband = bp[0].unwrap_or(0.0) * 0.05;
    rule
}

fn aqi_rules(table: AqiTable) -> Vec<ThresholdRule> {
    let (src, pm25_100, pm10_100) = match table {
        // aqi_hj633.csv lines 14 and 9: PM2.5 24 h IAQI 100 = 75, PM10 = 150 µg/m³.
        AqiTable::Hj633_2012 => ("HJ 633-2012 Table 1", 75.0, 150.0),
        // aqi_hj633.csv lines 24 and 19: HJ 633-2026 lowers them to 60 and 120 µg/m³.
        AqiTable::Hj633_2026 => ("HJ 633-2026", 60.0, 120.0),
    };
    vec![
        // aqi_hj633.csv lines 14 / 24: PM2.5 24 h column, IAQI 150/200/300 = 115/150/250.
        aqi_rule(
            "PM2.5 (AQI)",
            Quantity::Pm25,
            src,
            [Some(pm25_100), Some(115.0), Some(150.0), Some(250.0)],
        ),
        // aqi_hj633.csv lines 9 / 19: PM10 24 h column, IAQI 150/200/300 = 250/350/420.
        aqi_rule(
            "PM10 (AQI)",
            Quantity::Pm10,
            src,
            [Some(pm10_100), Some(250.0), Some(350.0), Some(420.0)],
        ),
        // aqi_hj633.csv lines 6 / 16: SO2 1 h column, IAQI 100/150/200 = 500/650/800; no
        // IAQI 300 in the 1 h column, so no red.
        aqi_rule(
            "SO2 (AQI, 1 h)",
            Quantity::So2,
            src,
            [Some(500.0), Some(650.0), Some(800.0), None],
        ),
        // aqi_hj633.csv lines 8 / 18: NO2 1 h column, IAQI 100/150/200/300 =
        // 200/700/1200/2340 µg/m³.
        aqi_rule(
            "NO2 (AQI, 1 h)",
            Quantity::No2,
            src,
            [Some(200.0), Some(700.0), Some(1_200.0), Some(2_340.0)],
        ),
        // aqi_hj633.csv lines 11 / 21: CO 1 h column, 10/35/60/90 mg/m³.
        aqi_rule(
            "CO (AQI, 1 h)",
            Quantity::Co,
            src,
            [Some(10.0), Some(35.0), Some(60.0), Some(90.0)],
        ),
        // aqi_hj633.csv lines 12 / 22: O3 1 h column, 200/300/400/800 µg/m³.
        aqi_rule(
            "O3 (AQI, 1 h)",
            Quantity::O3,
            src,
            [Some(200.0), Some(300.0), Some(400.0), Some(800.0)],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_tables_validate_and_differ_only_in_pm() {
        let a = default_rules(AqiTable::Hj633_2012);
        let b = default_rules(AqiTable::Hj633_2026);
        a.validate().unwrap();
        b.validate().unwrap();
        let differ: Vec<_> = a
            .rules
            .iter()
            .zip(&b.rules)
            .filter(|(x, y)| x.high != y.high)
            .map(|(x, _)| x.name.as_str())
            .collect();
        assert_eq!(differ, ["PM2.5 (AQI)", "PM10 (AQI)"]);
    }
}
