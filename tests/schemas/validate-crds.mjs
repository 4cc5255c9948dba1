// Validate Karpenter, KEDA and Prometheus Operator resources against the schemas that the npm packages
// @kubernetes-models/karpenter, /keda and /prometheus-operator carry (compiled validators; versions pinned in
// package.json and package-lock.json, installed by `make install` with `npm ci`). Used by tests/test_infra.py.
//
// stdin: a JSON array of Kubernetes documents. stdout: {"supported": ["apiVersion kind", ...],
// "results": [{"known": bool, "errors": ["..."]}, ...]}, one result per document; "known" is false for a
// kind and apiVersion these packages have no schema for.
import { readFileSync } from "node:fs";
import { EC2NodeClass } from "@kubernetes-models/karpenter/karpenter.k8s.aws/v1/EC2NodeClass";
import { NodePool } from "@kubernetes-models/karpenter/karpenter.sh/v1/NodePool";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = [NodePool, EC2NodeClass, ScaledObject, TriggerAuthentication, ServiceMonitor];
const docs = JSON.parse(readFileSync(0, "utf8"));
const results = docs.map((doc) => {
  const model = models.find((m) => m.apiVersion === doc.apiVersion && m.kind === doc.kind);
  if (!model) return { known: false, errors: [] };
  try {
    new model(doc).validate();
    return { known: true, errors: [] };
  } catch (error) {
    return { known: true, errors: [String(error?.message ?? error)] };
  }
});
const supported = models.map((m) => `${m.apiVersion} ${m.kind}`);
process.stdout.write(JSON.stringify({ supported, results }));
