//! Prices and the arithmetic of a bill: money as integer micro-units, flat and tiered
//! (graduated or volume) prices per action, the price in force in a month, and the one
//! rounding rule for a bill's total. Pure functions: must not do I/O or read a clock.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Micro-units of the billing currency per currency unit.
pub const MICROS: i64 = 1_000_000;

/// The month a price without `from` takes effect: before any month there is.
pub const ALWAYS: &str = "0000-01";

/// Parses "12.50", "0.000001", "-3" into micro-units; at most 6 decimals, no exponent.
pub fn parse_amount(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || fraction.len() > 6 || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.ends_with('.') {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
    let value = whole.checked_mul(MICROS)?.checked_add(fraction)?;
    Some(if negative { -value } else { value })
}

/// Micro-units as a decimal string with at least two decimals: 12500000 -> "12.50".
pub fn format_amount(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let whole = abs / MICROS as u64;
    let fraction = format!("{:06}", abs % MICROS as u64);
    let trimmed = fraction.trim_end_matches('0');
    let decimals = if trimmed.len() < 2 { &fraction[..2] } else { trimmed };
    format!("{sign}{whole}.{decimals}")
}

/// Serializes micro-units as `format_amount` text: JSON interfaces show money one way.
pub fn serialize_amount<S: serde::Serializer>(micros: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_amount(*micros))
}

/// How tiers apply to a month's calls of one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierMode {
    /// Each tier's calls at that tier's price.
    Graduated,
    /// Every call at the price of the tier the month's total reaches.
    Volume,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Upper bound of the tier in calls per month (inclusive); None: no bound (last tier).
    pub up_to: Option<u64>,
    /// Micro-units per call.
    pub unit: i64,
}

/// A price for one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Price {
    Flat { unit: i64 },
    Tiered { mode: TierMode, tiers: Vec<Tier> },
}

/// One tier's share of a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCharge {
    /// First and last call of the month in this tier (1-based, inclusive).
    pub from: u64,
    pub to: u64,
    pub calls: u64,
    pub unit: i64,
    pub amount: i64,
}

impl Price {
    /// Checks tiers: ascending bounds, the last one unbounded, units not negative.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Price::Flat { unit } if *unit < 0 => Err("a price cannot be negative".into()),
            Price::Flat { .. } => Ok(()),
            Price::Tiered { tiers, .. } => {
                if tiers.is_empty() {
                    return Err("tiers must not be empty".into());
                }
                let mut previous = 0u64;
                for (i, tier) in tiers.iter().enumerate() {
                    if tier.unit < 0 {
                        return Err("a price cannot be negative".into());
                    }
                    match tier.up_to {
                        Some(bound) if bound <= previous => {
                            return Err("tier bounds (up_to) must be ascending and above 0".into());
                        }
                        Some(bound) => previous = bound,
                        None if i + 1 != tiers.len() => {
                            return Err("only the last tier may leave out up_to".into());
                        }
                        None => {}
                    }
                }
                if tiers.last().is_some_and(|t| t.up_to.is_some()) {
                    return Err("the last tier must leave out up_to (no upper bound)".into());
                }
                Ok(())
            }
        }
    }

    /// The most one call can cost (the highest tier's unit): what a credit check must
    /// find room for before a call is made.
    pub fn highest_unit(&self) -> i64 {
        match self {
            Price::Flat { unit } => *unit,
            Price::Tiered { tiers, .. } => tiers.iter().map(|t| t.unit).max().unwrap_or(0),
        }
    }

    /// The amount of `calls` calls in one month, with the tier breakdown. None on overflow.
    pub fn charge(&self, calls: u64) -> Option<(i64, Vec<TierCharge>)> {
        let line = |from: u64, to: u64, unit: i64| -> Option<TierCharge> {
            let calls = to + 1 - from;
            let amount = i64::try_from(i128::from(calls) * i128::from(unit)).ok()?;
            Some(TierCharge {
                from,
                to,
                calls,
                unit,
                amount,
            })
        };
        if calls == 0 {
            return Some((0, Vec::new()));
        }
        let parts = match self {
            Price::Flat { unit } => vec![line(1, calls, *unit)?],
            Price::Tiered {
                mode: TierMode::Graduated,
                tiers,
            } => {
                let mut parts = Vec::new();
                let mut start = 1u64;
                for tier in tiers {
                    if start > calls {
                        break;
                    }
                    let end = tier.up_to.map_or(calls, |bound| bound.min(calls));
                    parts.push(line(start, end, tier.unit)?);
                    start = end + 1;
                }
                parts
            }
            Price::Tiered {
                mode: TierMode::Volume,
                tiers,
            } => {
                let tier = tiers
                    .iter()
                    .find(|t| t.up_to.is_none_or(|bound| calls <= bound))
                    .or(tiers.last())?;
                vec![line(1, calls, tier.unit)?]
            }
        };
        let total = parts.iter().try_fold(0i64, |sum, p| sum.checked_add(p.amount))?;
        Some((total, parts))
    }
}

/// Prices per action, each with the month it takes effect from ("YYYY-MM").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceBook {
    pub currency: String,
    /// Used for an action without its own prices; None: such an action cannot be billed.
    pub default: Option<Price>,
    pub actions: BTreeMap<String, BTreeMap<String, Price>>,
    /// Bill totals are rounded half up to a multiple of this many micro-units.
    pub total_rounding: i64,
}

impl PriceBook {
    /// The price of `action` in force in `month` ("YYYY-MM"): the latest one taking
    /// effect in or before it.
    pub fn price(&self, action: &str, month: &str) -> Option<&Price> {
        self.price_in_force(action, month).map(|(_, price)| price)
    }

    /// As `price`, with the month that price took effect; `None` for the default, which
    /// an action without prices of its own is billed at.
    pub fn price_in_force(&self, action: &str, month: &str) -> Option<(Option<&str>, &Price)> {
        match self.actions.get(action) {
            Some(prices) if !prices.is_empty() => prices
                .range::<str, _>((Bound::Unbounded, Bound::Included(month)))
                .next_back()
                .map(|(from, price)| (Some(from.as_str()), price)),
            _ => self.default.as_ref().map(|price| (None, price)),
        }
    }

    /// The rule for a bill's total: the sum of its lines, rounded half up (away from
    /// zero) to a multiple of `total_rounding`.
    pub fn round_total(&self, subtotal: i64) -> i64 {
        round_half_up(subtotal, self.total_rounding.max(1))
    }
}

pub fn round_half_up(value: i64, step: i64) -> i64 {
    let remainder = value.rem_euclid(step);
    let floor = value - remainder;
    if remainder * 2 >= step { floor + step } else { floor }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers(mode: TierMode) -> Price {
        // 1-1000 at 0.05, 1001-10000 at 0.03, beyond at 0.01
        Price::Tiered {
            mode,
            tiers: vec![
                Tier {
                    up_to: Some(1000),
                    unit: 50_000,
                },
                Tier {
                    up_to: Some(10_000),
                    unit: 30_000,
                },
                Tier {
                    up_to: None,
                    unit: 10_000,
                },
            ],
        }
    }

    #[test]
    fn amounts_parse_and_print_exactly() {
        assert_eq!(parse_amount("12.50"), Some(12_500_000));
        assert_eq!(parse_amount("0.000001"), Some(1));
        assert_eq!(parse_amount("-3"), Some(-3_000_000));
        assert_eq!(parse_amount("1.0000001"), None, "more than 6 decimals");
        assert_eq!(parse_amount("1e3"), None);
        assert_eq!(parse_amount("1."), None);
        assert_eq!(parse_amount(".5"), None);
        assert_eq!(parse_amount(""), None);
        assert_eq!(parse_amount("99999999999999"), None, "overflow");
        assert_eq!(format_amount(12_500_000), "12.50");
        assert_eq!(format_amount(1), "0.000001");
        assert_eq!(format_amount(-30_000), "-0.03");
        assert_eq!(format_amount(0), "0.00");
    }

    #[test]
    fn graduated_tiers_price_each_tier_separately_at_the_edges() {
        let price = tiers(TierMode::Graduated);
        assert_eq!(price.charge(0).unwrap().0, 0);
        assert_eq!(price.charge(1).unwrap().0, 50_000);
        assert_eq!(price.charge(1000).unwrap().0, 50_000_000);
        let (amount, parts) = price.charge(1001).unwrap();
        assert_eq!(amount, 50_000_000 + 30_000);
        assert_eq!((parts[1].from, parts[1].to, parts[1].calls), (1001, 1001, 1));
        assert_eq!(price.charge(10_000).unwrap().0, 50_000_000 + 9000 * 30_000);
        let (amount, parts) = price.charge(10_001).unwrap();
        assert_eq!(amount, 50_000_000 + 270_000_000 + 10_000);
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn volume_tiers_price_every_call_at_the_reached_tier() {
        let price = tiers(TierMode::Volume);
        assert_eq!(price.charge(1000).unwrap().0, 1000 * 50_000);
        assert_eq!(price.charge(1001).unwrap().0, 1001 * 30_000);
        assert_eq!(price.charge(10_000).unwrap().0, 10_000 * 30_000);
        assert_eq!(price.charge(10_001).unwrap().0, 10_001 * 10_000);
    }

    #[test]
    fn bad_tiers_are_refused() {
        let bad = |tiers: Vec<Tier>| {
            Price::Tiered {
                mode: TierMode::Graduated,
                tiers,
            }
            .validate()
            .is_err()
        };
        let t = |up_to, unit| Tier { up_to, unit };
        assert!(bad(vec![]));
        assert!(bad(vec![t(Some(10), 1)]), "last tier bounded");
        assert!(bad(vec![t(Some(10), 1), t(Some(5), 1), t(None, 1)]), "not ascending");
        assert!(bad(vec![t(None, 1), t(None, 1)]));
        assert!(bad(vec![t(Some(10), -1), t(None, 1)]));
        assert!(!bad(vec![t(Some(10), 1), t(None, 0)]));
    }

    #[test]
    fn the_price_in_force_is_the_latest_from_month_at_or_before() {
        let mut book = PriceBook {
            currency: "USD".into(),
            default: Some(Price::Flat { unit: 7 }),
            total_rounding: 10_000,
            ..Default::default()
        };
        book.actions.insert(
            "A".into(),
            BTreeMap::from([
                ("2026-01".into(), Price::Flat { unit: 1 }),
                ("2026-06".into(), Price::Flat { unit: 2 }),
            ]),
        );
        assert_eq!(book.price("A", "2025-12"), None, "no price yet");
        assert_eq!(book.price("A", "2026-05"), Some(&Price::Flat { unit: 1 }));
        assert_eq!(book.price("A", "2026-06"), Some(&Price::Flat { unit: 2 }));
        assert_eq!(book.price("B", "2026-06"), Some(&Price::Flat { unit: 7 }));
        assert_eq!(
            book.price_in_force("A", "2026-07"),
            Some((Some("2026-06"), &Price::Flat { unit: 2 }))
        );
        assert_eq!(
            book.price_in_force("B", "2026-07"),
            Some((None, &Price::Flat { unit: 7 }))
        );
        assert_eq!(book.round_total(12_344_999), 12_340_000);
        assert_eq!(book.round_total(12_345_000), 12_350_000, "half up");
        assert_eq!(book.round_total(0), 0);
    }
}
