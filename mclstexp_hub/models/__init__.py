"""Model families of mclstexp-hub (today one: `mclstexp`), laid out as in transformers."""
