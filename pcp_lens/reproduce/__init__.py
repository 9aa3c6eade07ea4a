"""The paper's studies as pipelines of pcp_lens functions (the toy study now)."""
