"""Development tools that check the product from outside, in a real browser (run from a source checkout)."""
