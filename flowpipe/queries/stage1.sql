-- flowpipe: stage=1 title="Stage 1: allow-all (baseline visibility)"
--
-- allow-all (fromEntities/toEntities all) is the only policy in namespace shop, so Hubble
-- names it for every allowed flow, with match type "all" (policy-verdict:all ... ALLOWED).
-- Nothing is proxied yet, so the verdicts are plain FORWARDED, never REDIRECTED.

-- rule: dns-allowed-by-allow-all
-- why: with only allow-all applied, DNS from shop to kube-dns:53 must be allowed by allow-all (policy-verdict:all EGRESS ALLOWED)
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: allowed_by(egress_allowed_by, 'allow-all')
-- assert: policy_match = 'all'
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND dst_port = 53 AND traffic_direction = 'EGRESS';

-- rule: fe-be-egress-allowed-by-allow-all
-- why: frontend->backend:80 must leave frontend allowed by allow-all (policy-verdict:all EGRESS ALLOWED)
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: allowed_by(egress_allowed_by, 'allow-all')
-- assert: policy_match = 'all'
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80 AND traffic_direction = 'EGRESS';

-- rule: fe-be-ingress-allowed-by-allow-all
-- why: frontend->backend:80 must enter backend allowed by allow-all (policy-verdict:all INGRESS ALLOWED, ingress_allowed_by = allow-all)
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: allowed_by(ingress_allowed_by, 'allow-all')
-- assert: policy_match = 'all'
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80 AND traffic_direction = 'INGRESS';

-- rule: no-policy-drops-in-shop
-- why: allow-all allows everything, so no flow of shop may be dropped by policy (Forwarded only in Grafana)
-- expect: none
-- Policy drops only: drops such as "Unsupported L3 protocol" happen on any cluster and say
-- nothing about the policies of this stage.
SELECT * FROM drops
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND (drop_reason_desc IN ('POLICY_DENIED', 'POLICY_DENY') OR event IN ('policy-verdict', 'l7'));
